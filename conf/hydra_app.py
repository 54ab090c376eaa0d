"""Strict Hydra entry points shared by `python -m data_pipeline` and `python -m pretrain`.

- Unknown keys are errors everywhere, also when added with Hydra's `+key=value` form, with the
  nearest valid key suggested (`unknown_keys`).
- Every configuration error exits 2: Hydra's own composition errors (unknown key, wrong type,
  missing group option) exit 1 from `hydra.main`; `run_app` maps them to 2.
- Field descriptions come from the config dataclasses' attribute docstrings (`field_docs`),
  for `--help` and the docs.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

EXIT_CONFIG_ERROR = 2
"""Exit status of every configuration error."""


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (`x: int = 1` followed by a string literal)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source available: no descriptions
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def nearest(key: str, candidates: list[str]) -> str:
    """`; did you mean X?` for the closest candidate, or '' when none is close."""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _dataclass_fields(cls: type) -> dict[str, type | None]:
    """Field name -> the field's dataclass type (None for a plain value)."""
    out: dict[str, type | None] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = type(default) if dataclasses.is_dataclass(default) else None
    return out


def unknown_keys(cfg: Any, schema: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """One message per key of the composed `cfg` (a mapping) that `schema` does not have.

    `skip` names top-level keys that are not part of the schema (e.g. `hydra`).
    """
    known = _dataclass_fields(schema)
    problems = []
    for key in cfg:
        if key in skip and not prefix:
            continue
        dotted = f"{prefix}{key}"
        if key not in known:
            names = [f"{prefix}{name}" for name in known]
            problems.append(f"unknown key '{dotted}'{nearest(dotted, names)}")
            continue
        sub = known[key]
        value = cfg[key]
        if sub is not None and hasattr(value, "keys"):
            problems += unknown_keys(value, sub, f"{dotted}.")
    return problems


def _key_problem(dotted: str, schema: type) -> str | None:
    """None if `dotted` (e.g. `train.max_steps`) is a key of `schema`, else the message.

    The suggestion replaces the first unknown part by its nearest valid name
    (`trian.max_steps` -> `train.max_steps`).
    """
    cls: type | None = schema
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        known = _dataclass_fields(cls) if cls is not None else {}
        if part not in known:
            match = difflib.get_close_matches(part, list(known), n=1, cutoff=0.6)
            hint = ""
            if match:
                hint = (
                    f"; did you mean {'.'.join([*parts[:depth], match[0], *parts[depth + 1 :]])}?"
                )
            return f"unknown key '{dotted}'{hint}"
        cls = known[part]
        if cls is None:  # a plain value: `data.paths.0` style indexing is Hydra's business
            return None
    return None


def override_key_problems(args: list[str], schema: type, skip: tuple[str, ...]) -> list[str]:
    """Messages for command-line overrides whose key is not in `schema` (checked before Hydra).

    Group selections (`model=tiny`) are keys of the schema too; `hydra.*`, `hydra/...` and
    Hydra's own flags are skipped.
    """
    problems = []
    for arg in args:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if "/" in key or key.split(".")[0] in skip or not key:
            continue
        problem = _key_problem(key, schema)
        if problem:
            problems.append(problem)
    return problems


class TaskExit(SystemExit):
    """An exit decided by the task or its launcher (not a Hydra composition error), with the
    one-line `message` already printed."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code)
        self.message = message


def run_app(
    task: Callable[[Any], None],
    config_name: str,
    config_path: str,
    job: str,
    schema: type,
    skip: tuple[str, ...] = ("hydra",),
) -> None:
    """`hydra.main(config_path, config_name)(task)()`, with every configuration error exiting 2.

    Override keys are checked against `schema` first (with the nearest valid key suggested).
    Hydra exits 1 both for a composition error (before `task` runs) and for an exception
    escaping `task`; only the first is a configuration error.
    """
    import sys

    import hydra

    problems = override_key_problems(sys.argv[1:], schema, skip)
    if problems:
        print(f"{job}: config error: " + "; ".join(problems), file=sys.stderr)
        print(f"`python -m {job} --help` lists the groups and keys", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR)

    started: list[bool] = []

    @functools.wraps(task)
    def traced(cfg: Any) -> None:
        started.append(True)
        task(cfg)

    try:
        hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(traced)()
    except SystemExit as exc:
        if exc.code == 1 and not started and not isinstance(exc, TaskExit):
            print(
                f"{job}: config error (see the message above); `python -m {job} --help` lists "
                "the groups and keys",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_CONFIG_ERROR) from None
        raise
