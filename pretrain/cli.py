"""Command-line plumbing shared by the `key=value` tools: export_hf, import_hf, generate.

Each tool has a config dataclass whose attribute docstrings are its documentation; `run_tool`
prints them for `--help`, parses `key=value` arguments strictly (an unknown key is an error
naming the nearest valid key), sets up logging, maps `ConfigError` to exit 2 and always tears
the process group down.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pretrain.config import ConfigError
from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR, field_docs, nearest

T = TypeVar("T")
log = logging.getLogger("pretrain")


def usage(prog: str, cls: type, summary: str, examples: Sequence[str] = ()) -> str:
    """Help text: summary, examples, then every key with its default and description."""
    docs = field_docs(cls)
    lines = [f"usage: {prog} [key=value ...]", "", summary, ""]
    if examples:
        lines += ["Examples:", *(f"  {e}" for e in examples), ""]
    lines.append("Keys (default):")
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        required = default in ("", None) and "Required" in docs.get(f.name, "")
        shown = "(required)" if required else repr(default)
        lines.append(f"  {f.name}={shown}")
        if docs.get(f.name):
            pad = " " * 6
            lines += textwrap.wrap(docs[f.name], 96, initial_indent=pad, subsequent_indent=pad)
    return "\n".join(lines)


def parse_key_values(argv: Sequence[str], cls: type[T], prog: str) -> T:
    """`key=value` arguments over `cls`'s defaults; ConfigError names a bad key or value."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    names = [f.name for f in dataclasses.fields(cls)]
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ConfigError(f"{prog}: arguments must be key=value, got {bad} (see --help)")
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+")
        if key not in names:
            raise ConfigError(
                f"{prog}: unknown key {key!r}{nearest(key, names)} Valid keys: {', '.join(names)}"
            )
    verbatim, parsed = _split_text_values(argv, cls)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.from_dotlist(parsed))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{prog}: {str(exc).splitlines()[0]} (see --help)") from exc
    return dataclasses.replace(cfg, **verbatim)  # type: ignore[return-value]


def _split_text_values(argv: Sequence[str], cls: type) -> tuple[dict[str, str | None], list[str]]:
    """({key: value} of the text-typed keys, the other arguments).

    Values of `str` fields are taken exactly as given: parsing them as YAML (OmegaConf) would
    turn a prompt like `def f(a):` into a mapping, strip indentation and drop `# comments`.
    `null` still means None for an optional text field.
    """
    kinds = {f.name: str(f.type).replace(" ", "") for f in dataclasses.fields(cls)}
    verbatim: dict[str, str | None] = {}
    parsed = []
    for arg in argv:
        key, _, value = arg.partition("=")
        key = key.lstrip("+")
        if kinds.get(key) in ("str", "str|None"):
            verbatim[key] = None if value == "null" and kinds[key] == "str|None" else value
        else:
            parsed.append(arg)
    return verbatim, parsed


def configure_tool_logging() -> None:
    """INFO lines with timestamps on stderr; megatron's chatter at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)


def run_tool(
    prog: str,
    cls: type[T],
    body: Callable[[T], int | None],
    summary: str,
    examples: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> int:
    """The whole life of a tool: --help, parse, run `body(cfg)`, exit codes, teardown."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(usage(prog, cls, summary, examples))
        return 0
    configure_tool_logging()
    from pretrain import parallel

    try:
        return body(parse_key_values(args, cls, prog)) or 0
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG_ERROR
    finally:
        parallel.teardown()


def require(cfg: Any, prog: str, *keys: str) -> None:
    """ConfigError for each required key left empty."""
    for key in keys:
        if not getattr(cfg, key):
            raise ConfigError(f"{prog}: {key}=... is required (see --help)")
