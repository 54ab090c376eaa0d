"""Instruction records -> checked turns -> token ids with an exact loss mask (runs in workers).

Target rule: the example is rendered by the chat template to one string and encoded once with
SentencePiece, which reports each piece's begin offset in bytes of the UTF-8 text; a token is a
target when that first byte lies inside a target span (for a token that straddles a boundary,
its first byte decides). The EOD appended after the example is a target too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipeline.fields import MISSING, lookup
from data_pipeline.instruct.templates import Template, has_sentinel, render
from data_pipeline.readers import PythonSyntax, Unreadable
from data_pipeline.records import parse_json_line

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class InstructSpec:
    """What a worker needs to turn instruction records into ids and masks (picklable)."""

    format: str
    """chat | prompt_completion."""
    messages_key: str
    prompt_key: str
    completion_key: str
    template: Template
    max_tokens: int
    """Longest example kept, EOD included."""
    overlong: str
    """truncate | drop."""


@dataclass
class Encoded:
    """One example's ids and mask (same length, EOD last unless truncated), and its fate."""

    ids: list[int]
    mask: np.ndarray
    status: str
    """ok | truncated | dropped."""


def _value(obj: Any, key: str) -> Any:
    return lookup(obj, key) if isinstance(obj, dict) else MISSING


def _chat_turns(obj: Any, spec: InstructSpec) -> tuple[list[dict] | None, str | None]:
    turns = _value(obj, spec.messages_key)
    if turns is MISSING or turns is None:
        return None, "missing_messages"
    if not isinstance(turns, list) or not turns:
        return None, "malformed_messages"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            return None, "malformed_messages"
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            return None, "unknown_role"
        if role == "system" and i > 0:
            return None, "misplaced_system"
        messages.append({"role": role, "content": content})
    return messages, None


def _pair_turns(obj: Any, spec: InstructSpec) -> tuple[list[dict] | None, str | None]:
    prompt, completion = _value(obj, spec.prompt_key), _value(obj, spec.completion_key)
    if prompt is MISSING or prompt is None:
        return None, "missing_prompt"
    if completion is MISSING or completion is None:
        return None, "missing_completion"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], None


def _check_turns(messages: list[dict]) -> str | None:
    for turn in messages:
        content = turn["content"]
        if not isinstance(content, str):
            return "non_string_content"
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_utf8"
        if has_sentinel(content):
            return "reserved_char"
        if turn["role"] == "assistant" and not content.strip():
            return "empty_assistant"
    if not any(turn["role"] == "assistant" for turn in messages):
        return "no_assistant"
    return None


def parse_example(kind: str, payload: Any, spec: InstructSpec) -> tuple[list | None, str | None]:
    """(messages, None) for a good record, (None, skip reason) for a bad one.

    kind: jsonl (payload: a raw line), value (a parquet/hf row as a dict), pairs (a dict made by
    input.python_pairs).
    """
    if isinstance(payload, Unreadable):
        return None, "unreadable_file"
    if isinstance(payload, PythonSyntax):
        return None, "python_syntax"
    if kind == "jsonl":
        payload, reason = parse_json_line(payload)
        if reason is not None:
            return None, reason
    if spec.format == "chat":
        messages, reason = _chat_turns(payload, spec)
    else:
        messages, reason = _pair_turns(payload, spec)
    if messages is None:
        return None, reason
    return messages, _check_turns(messages)


def render_example(compiled: Any, messages: list[dict]) -> tuple[list | None, str | None]:
    """(spans, None), or (None, "render_error") when the template fails on this example."""
    try:
        spans = render(compiled, messages)
    except Exception:  # a user template may raise anything (raise_exception, type errors)
        return None, "render_error"
    if not any(is_target and text for text, is_target in spans):
        return None, "render_error"
    return spans, None


def _target_ranges(spans: list[tuple[str, bool]]) -> tuple[str, np.ndarray]:
    """(text, flat array [start0, end0, start1, end1, ...] of target byte ranges)."""
    bounds, pos = [], 0
    for text, is_target in spans:
        size = len(text.encode("utf-8"))
        if is_target and size:
            bounds += [pos, pos + size]
        pos += size
    return "".join(text for text, _ in spans), np.array(bounds, dtype=np.int64)


def encode_spans(sp: Any, spans: list[tuple[str, bool]], eod: int) -> tuple[list[int], np.ndarray]:
    """Token ids of the rendered example followed by EOD, and the mask (1 = target)."""
    text, bounds = _target_ranges(spans)
    pieces = sp.encode(text, out_type="proto").pieces
    ids = [p.id for p in pieces]
    begins = np.fromiter((p.begin for p in pieces), np.int64, len(pieces))
    # a begin offset b is inside [start, end) when it falls after an odd number of bounds
    inside = np.searchsorted(bounds, begins, side="right") % 2 == 1
    mask = np.ones(len(ids) + 1, dtype=np.uint8)
    mask[:-1] = inside
    return ids + [eod], mask


def limit_length(ids: list[int], mask: np.ndarray, spec: InstructSpec) -> Encoded:
    """Apply input.max_tokens / input.overlong to one encoded example."""
    if len(ids) <= spec.max_tokens:
        return Encoded(ids, mask, "ok")
    if spec.overlong == "drop":
        return Encoded([], mask[:0], "dropped")
    ids, mask = ids[: spec.max_tokens], mask[: spec.max_tokens]
    if not mask.any():  # the prompt alone fills max_tokens
        return Encoded([], mask[:0], "dropped")
    return Encoded(ids, mask, "truncated")


def training_text(kind: str, payload: Any, spec: InstructSpec, compiled: Any) -> str | None:
    """The rendered text of a good record, without markers (tokenizer training), else None."""
    messages, reason = parse_example(kind, payload, spec)
    if reason is not None:
        return None
    spans, reason = render_example(compiled, messages)
    return None if spans is None else "".join(text for text, _ in spans)
