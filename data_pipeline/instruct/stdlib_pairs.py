"""Prompt/completion pairs from Python source with `ast` (the embedded code-instruction corpus).

For every function or method (nested ones too) that has a docstring, in source order:
prompt = its decorators, signature and docstring; completion = the rest of its body, both
dedented by the `def`'s column and the completion ending with a newline. A function is left
out when its body after the docstring has fewer than MIN_BODY_LINES or more than
MAX_BODY_LINES lines, when the docstring shares a line with code, or when a line of it is
indented less than the `def` (text inside a string at column 0). `input=stdlib_instruct` reads
the running Python's standard library this way (input.python_pairs=true).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator

MIN_BODY_LINES = 2
"""Fewest completion lines kept (one-line bodies are mostly `pass`, `return x`, `raise ...`)."""
MAX_BODY_LINES = 60
"""Most completion lines kept (longer bodies exceed the preset's input.max_tokens anyway)."""


def _dedent(lines: list[str], col: int) -> list[str] | None:
    """`lines` with `col` leading characters removed (blank lines emptied); None when a
    non-blank line has fewer than `col` leading spaces/tabs."""
    out = []
    for line in lines:
        if not line.strip():
            out.append("")
        elif len(line) - len(line.lstrip(" \t")) < col:
            return None
        else:
            out.append(line[col:])
    return out


def _pair(node: ast.AST, lines: list[str]) -> tuple[str, str] | None:
    """(prompt, completion) of one function node, or None when the rule leaves it out."""
    body = node.body  # type: ignore[attr-defined]
    if not (len(body) >= 2 and ast.get_docstring(node, clean=False) is not None):
        return None
    doc, rest = body[0], body[1]
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])  # type: ignore[attr-defined]
    if doc.lineno <= node.lineno or rest.lineno <= doc.end_lineno:  # one-liners: def f(): "x"; ...
        return None
    end = node.end_lineno  # type: ignore[attr-defined]
    prompt_lines = lines[first - 1 : doc.end_lineno]
    body_lines = lines[doc.end_lineno : end]
    while body_lines and not body_lines[0].strip():
        body_lines.pop(0)
    if not MIN_BODY_LINES <= len(body_lines) <= MAX_BODY_LINES:
        return None
    col = node.col_offset  # type: ignore[attr-defined]
    prompt, completion = _dedent(prompt_lines, col), _dedent(body_lines, col)
    if prompt is None or completion is None:
        return None
    return "\n".join(prompt) + "\n", "\n".join(completion) + "\n"


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _functions(statements: list[ast.stmt]) -> Iterator[ast.AST]:
    """Function nodes among `statements` and inside their statement blocks (a def is always a
    statement, so expressions are not visited: several times faster than ast.walk)."""
    for node in statements:
        if isinstance(node, _FUNCTIONS):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and not isinstance(block[0], ast.expr):
                for child in block:
                    if isinstance(child, ast.excepthandler | ast.match_case):
                        yield from _functions(child.body)
                    else:
                        yield from _functions([child])


def python_pairs(source: bytes) -> Iterator[tuple[int, dict[str, str]]]:
    """(line of the def, {"prompt", "completion"}) for each documented function, in source
    order; SyntaxError/ValueError when the source does not parse."""
    text = importlib.util.decode_source(source)  # honours a `# coding:` line
    tree = ast.parse(text)
    lines = text.splitlines()
    functions = list(_functions(tree.body))
    for node in sorted(functions, key=lambda n: (n.lineno, n.col_offset)):
        pair = _pair(node, lines)
        if pair is not None:
            yield node.lineno, {"prompt": pair[0], "completion": pair[1]}
