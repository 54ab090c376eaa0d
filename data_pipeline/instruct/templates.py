"""Chat templates: Jinja2 text that renders an example's turns to one string with target spans.

A template receives `messages` (a list of {role, content}) and two strings, `target_start` and
`target_end`, which it must put around every text the model learns (assistant content and its
end-of-turn marker). They are rendered as the private-use characters U+E000 / U+E001 and the
result is split on them into (text, is_target) spans; user text holding either is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.errors import ConfigError

TARGET_START = "\ue000"
"""Rendered for `target_start`: the learned text begins here."""
TARGET_END = "\ue001"
"""Rendered for `target_end`: the learned text ends here."""
SENTINELS = (TARGET_START, TARGET_END)

PLAIN = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{ target_start }}{{ m.content }}{{ target_end }}"
    "{%- else -%}{{ m.content }}{%- endif -%}"
    "{%- endfor -%}"
)
"""The turns' contents back to back, no markers; the assistant's content is the target."""

DEFAULT = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}{{ target_start }}{{ m.content }}{{ '<|end|>' }}{{ target_end }}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|' + m.role + '|>\\n' }}{{ m.content }}{{ '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
"""`<|role|>\\n` + content + `<|end|>\\n` per turn; for the assistant, content + `<|end|>` is
the target (the newline after it is not)."""

LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' }}"
    "{%- if m.role == 'assistant' -%}"
    "{{ target_start }}{{ m.content }}{{ '<|eot_id|>' }}{{ target_end }}"
    "{%- else -%}{{ m.content }}{{ '<|eot_id|>' }}{%- endif -%}"
    "{%- endfor -%}"
)
"""Llama-3 layout: the assistant's content + `<|eot_id|>` is the target."""

BUILTINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plain": (PLAIN, ()),
    "default": (DEFAULT, ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    "llama3": (
        LLAMA3,
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
}
"""Built-in templates: name -> (text, special tokens they emit)."""

PROBES = {
    "chat": [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Add two numbers."},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b\n"},
        {"role": "user", "content": "And three?"},
        {"role": "assistant", "content": "def add3(a, b, c):\n    return a + b + c\n"},
    ],
    "prompt_completion": [
        {"role": "user", "content": "def add(a, b):\n"},
        {"role": "assistant", "content": "    return a + b\n"},
    ],
}
"""Examples rendered once before any work starts, to check a template (render errors, no target)."""


@dataclass(frozen=True)
class Template:
    """A chat template, as recorded in the manifest (`instruct.template`)."""

    name: str
    """Built-in name, or the path of the user's Jinja file."""
    text: str
    """The Jinja source."""
    special_tokens: tuple[str, ...]
    """Pieces the template emits, each to be one token."""

    @property
    def sha256(self) -> str:
        """Hex sha256 of the template text (UTF-8)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def manifest(self) -> dict[str, str]:
        """The manifest's `instruct.template` entry."""
        return {"name": self.name, "sha256": self.sha256, "text": self.text}


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


def load_template(
    choice: str | None, fmt: str, special_tokens: list[str] | tuple[str, ...] = ()
) -> Template:
    """The template of input.template=`choice` for input.format=`fmt` (text read, not checked)."""
    if choice is None:
        choice = "plain" if fmt == "prompt_completion" else "default"
    if choice in BUILTINS:
        text, tokens = BUILTINS[choice]
        return Template(choice, text, tuple(dict.fromkeys([*tokens, *special_tokens])))
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"input.template={choice!r}: neither a built-in template ({', '.join(BUILTINS)}) "
            "nor an existing Jinja file. Give one of those names or the path of a template file."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"input.template={choice!r}: cannot be read as UTF-8 ({e})") from e
    return Template(str(path.resolve()), text, tuple(dict.fromkeys(special_tokens)))


def compile_template(template: Template) -> Any:
    """The compiled Jinja template; ConfigError naming the file and line on a syntax error."""
    from jinja2 import TemplateSyntaxError

    if any(s in template.text for s in SENTINELS):
        raise ConfigError(
            f"input.template={template.name}: the text holds U+E000/U+E001, the characters "
            "reserved for target_start/target_end; use the variables instead."
        )
    try:
        return _environment().from_string(template.text)
    except TemplateSyntaxError as e:
        raise ConfigError(
            f"input.template={template.name}: line {e.lineno}: Jinja syntax error: {e.message}"
        ) from e


def split_spans(text: str) -> list[tuple[str, bool]]:
    """(text, is_target) spans of a rendered example; ValueError for unbalanced markers."""
    spans: list[tuple[str, bool]] = []
    inside, current = False, []
    for ch in text:
        if ch in SENTINELS:
            if (ch == TARGET_START) == inside:
                raise ValueError("target_start/target_end are not balanced (nested or unpaired)")
            if current:
                spans.append(("".join(current), inside))
            inside, current = not inside, []
        else:
            current.append(ch)
    if inside:
        raise ValueError("target_start is never closed by target_end")
    if current:
        spans.append(("".join(current), False))
    return spans


def render(compiled: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The spans of one example (raises jinja2 errors or ValueError; the caller adds context)."""
    text = compiled.render(messages=messages, target_start=TARGET_START, target_end=TARGET_END)
    return split_spans(text)


def check_template(template: Template, fmt: str) -> Any:
    """Compile and render a probe example: ConfigError naming input.template when it fails to
    render or renders no target; return the compiled template."""
    from jinja2 import TemplateError

    compiled = compile_template(template)
    try:
        spans = render(compiled, PROBES[fmt])
    except (TemplateError, ValueError, TypeError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ConfigError(
            f"input.template={template.name}: does not render a {fmt} example{where}: "
            f"{type(e).__name__}: {e}. It gets `messages` (list of {{role, content}}), "
            "`target_start` and `target_end` only."
        ) from e
    if not any(is_target and text for text, is_target in spans):
        raise ConfigError(
            f"input.template={template.name}: renders no target text for a {fmt} example. Put "
            "{{ target_start }} ... {{ target_end }} around the assistant content."
        )
    return compiled


def has_sentinel(text: str) -> bool:
    """Whether user text holds a character reserved for the target markers."""
    return TARGET_START in text or TARGET_END in text
