"""The job-level side of instruction data: checks before anything is written, the manifest block.

`build_spec` runs before the output dir is touched: it loads and test-renders the chat template
and, when a tokenizer is given, checks that each special token is one piece of it. Every failure
is a ConfigError, so a bad template or tokenizer leaves nothing behind in output.dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipeline.config import InputConfig
from data_pipeline.errors import ConfigError
from data_pipeline.instruct.examples import InstructSpec
from data_pipeline.instruct.templates import Template, check_template, load_template


def template_of(inp: InputConfig) -> Template | None:
    """The chat template of an instruction input (None for ordinary text input)."""
    if not inp.is_instruct():
        return None
    return load_template(inp.template, inp.format, inp.special_tokens)


def special_tokens(inp: InputConfig) -> tuple[str, ...]:
    """Pieces to reserve as SentencePiece user_defined_symbols when training a tokenizer."""
    template = template_of(inp)
    return template.special_tokens if template is not None else ()


def spec_of(inp: InputConfig, template: Template) -> InstructSpec:
    """The picklable settings workers get."""
    return InstructSpec(
        format=inp.format,
        messages_key=inp.messages_key,
        prompt_key=inp.prompt_key,
        completion_key=inp.completion_key,
        template=template,
        max_tokens=inp.max_tokens,
        overlong=inp.overlong,
    )


def check_special_tokens(model_path: str | Path, tokens: tuple[str, ...], source: str) -> None:
    """ConfigError naming `source` (e.g. tokenizer.model=PATH) and the first special token that
    SentencePiece does not encode as exactly one piece."""
    from data_pipeline.tokenizer import load_processor

    sp = load_processor(model_path)
    for token in tokens:
        pieces = [p for p in sp.encode(token, out_type="proto").pieces if p.surface]
        if len(pieces) != 1 or pieces[0].surface != token or pieces[0].id == sp.unk_id():
            split = [p.piece for p in pieces]
            raise ConfigError(
                f"{source}: the chat template's special token {token!r} is not one token of this "
                f"tokenizer (it encodes as {split}). Retrain the tokenizer with the template "
                "(tokenizer.model=null reserves its special tokens), or pick another template "
                "(input.template=plain has none)."
            )


def build_spec(inp: InputConfig, model: str | None) -> InstructSpec | None:
    """Check the template (and the given tokenizer's special tokens); None for text input."""
    template = template_of(inp)
    if template is None:
        return None
    check_template(template, inp.format)
    if model is not None:
        check_special_tokens(model, template.special_tokens, f"tokenizer.model={model}")
    return spec_of(inp, template)


def manifest_block(spec: InstructSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's top-level `instruct` entry (docs/data_format.md)."""
    return {
        "format": spec.format,
        "template": spec.template.manifest(),
        "special_tokens": list(spec.template.special_tokens),
        "max_tokens": spec.max_tokens,
        "overlong": spec.overlong,
        "truncated": sum(r.get("truncated", 0) for r in records),
        "dropped": sum(r.get("dropped", 0) for r in records),
        "num_target_tokens": sum(r.get("num_target_tokens", 0) for r in records),
    }


def fingerprint_settings(spec: InstructSpec | None) -> dict[str, Any]:
    """What of the instruction settings decides a shard's bytes (its done-record fingerprint)."""
    if spec is None:
        return {}
    return {
        "instruct": [
            spec.format,
            spec.messages_key,
            spec.prompt_key,
            spec.completion_key,
            spec.template.sha256,
            spec.max_tokens,
            spec.overlong,
        ]
    }
