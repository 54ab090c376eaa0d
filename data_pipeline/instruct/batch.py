"""One worker batch of instruction records -> concatenated ids, loss masks and lengths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_pipeline.instruct.examples import (
    InstructSpec,
    encode_spans,
    limit_length,
    parse_example,
    render_example,
)


@dataclass
class EncodedBatch:
    """The examples of a batch that are kept, back to back (EOD closing each)."""

    ids: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    bad: list[tuple[int, str]] = field(default_factory=list)
    """(position in the batch, skip reason) of bad records."""
    num_bytes: int = 0
    """UTF-8 bytes of the rendered text of the kept examples."""
    truncated: int = 0
    dropped: int = 0


def encode_examples(
    kinds: list[str],
    payloads: list[Any],
    spec: InstructSpec,
    compiled: Any,
    sp: Any,
    eod: int,
    dtype: np.dtype,
) -> EncodedBatch:
    """Parse, render, encode and length-limit every record of a batch, in order."""
    ids: list[int] = []
    masks: list[np.ndarray] = []
    lengths: list[int] = []
    out = EncodedBatch(np.zeros(0, dtype), np.zeros(0, np.uint8), np.zeros(0, np.int64))
    for i, (kind, payload) in enumerate(zip(kinds, payloads, strict=True)):
        messages, reason = parse_example(kind, payload, spec)
        spans = None
        if reason is None:
            spans, reason = render_example(compiled, messages)
        if reason is not None:
            out.bad.append((i, reason))
            continue
        example = limit_length(*encode_spans(sp, spans, eod), spec)
        if example.status == "dropped":
            out.dropped += 1
            continue
        out.truncated += example.status == "truncated"
        ids.extend(example.ids)
        masks.append(example.mask)
        lengths.append(len(example.ids))
        out.num_bytes += sum(len(text.encode("utf-8")) for text, _ in spans)
    out.ids = np.array(ids, dtype=dtype)
    out.mask = np.concatenate(masks) if masks else out.mask
    out.lengths = np.array(lengths, dtype=np.int64)
    return out
