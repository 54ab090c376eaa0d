"""The fill-in-the-middle transformation of one unit of tokens (pure numpy, no torch, no I/O).

A unit is a document's tokens without its trailing EOD (data.fim.level=document) or a whole
packed window (level=context). Whether a unit is transformed, and whether as SPM, are two
uniform draws from a counter-based hash of (seed, salt, unit key) (`unit_draws`, vectorised, so
a dataset decides for millions of documents at once and any unit can be recomputed on its own:
random access, exact resume). The two split points come from a numpy Generator seeded with the
same triple (`unit_rng`).

Split points are drawn uniformly over the unit's *characters* (as StarCoder/bigcode draws them
over the document's text), not over its tokens: a long token is as likely to hold a cut as the
characters it spans. Each point is then snapped to the start of the token that contains the
chosen character, so the output is exactly the unit's tokens reordered, plus three sentinels
(no re-tokenisation, no token lost or changed):

- PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
- SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle (bigcode's SPM variant,
  also Code Llama's: the prefix directly precedes the middle it continues).

A token's character count is the length of its SentencePiece piece (the word-boundary mark
counts 1, like the space it stands for); byte-fallback, control and unknown pieces count 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SENTINELS = 3
"""Tokens a transformed unit gains: <fim_prefix>, <fim_suffix>, <fim_middle>."""

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class FimIds:
    """The sentinel ids of data.fim (`pretrain.special_tokens.fim_ids`)."""

    prefix: int
    middle: int
    suffix: int
    pad: int


def char_lengths(processor: Any) -> np.ndarray:
    """Characters of every token id of a SentencePiece processor (int64 array, all >= 1)."""
    size = processor.get_piece_size()
    lengths = np.ones(size, dtype=np.int64)
    for ident in range(size):
        if processor.is_byte(ident) or processor.is_control(ident) or processor.is_unknown(ident):
            continue
        lengths[ident] = max(1, len(processor.id_to_piece(ident)))
    return lengths


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def unit_draws(seed: int, salt: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent uniforms in [0, 1) per key: (transform draw, SPM draw).

    A pure function of (seed, salt, key): the same unit gets the same draws in every process,
    layout and resumed run.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _mix(np.full(keys.shape, (seed & _MASK64), dtype=np.uint64) + _GOLDEN)
        base = _mix(base + np.uint64(salt & _MASK64))
        base = _mix(base + keys)
        first = _mix(base + _GOLDEN)
        second = _mix(base + _GOLDEN * np.uint64(2))
    scale = 1.0 / float(1 << 53)
    return (first >> np.uint64(11)) * scale, (second >> np.uint64(11)) * scale


def unit_rng(seed: int, salt: int, key: int) -> np.random.Generator:
    """The Generator of one unit's split points."""
    return np.random.default_rng([seed & _MASK64, salt & _MASK64, int(key), 0xF1])


def split_points(lengths: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Two token boundaries i <= j of a unit whose tokens have `lengths` characters.

    Two character positions are drawn uniformly in [0, total] (StarCoder's
    `randint(0, len(text) + 1, size=2)`), sorted, and each is moved back to the start of the
    token holding that character (a position at the very end stays at the end).
    """
    bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    chars = np.sort(rng.integers(0, int(bounds[-1]) + 1, size=2))
    first, second = np.searchsorted(bounds, chars, side="right") - 1
    return int(first), int(second)


def permute(tokens: np.ndarray, first: int, second: int, spm: bool, ids: FimIds) -> np.ndarray:
    """The unit cut at token boundaries first <= second, written PSM or SPM with sentinels."""
    prefix, middle, suffix = tokens[:first], tokens[first:second], tokens[second:]
    pre, mid, suf = (
        np.array([i], dtype=tokens.dtype) for i in (ids.prefix, ids.middle, ids.suffix)
    )
    if spm:
        parts = (pre, suf, suffix, mid, prefix, middle)
    else:
        parts = (pre, prefix, suf, suffix, mid, middle)
    return np.concatenate(parts)


def transform_unit(
    tokens: np.ndarray,
    lengths: np.ndarray,
    ids: FimIds,
    spm: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """One unit FIM-transformed (always): split points from `rng`, `lengths` per token id."""
    first, second = split_points(lengths[tokens], rng)
    return permute(tokens, first, second, spm, ids)


def transform_document(
    doc: np.ndarray,
    eod: int,
    lengths: np.ndarray,
    ids: FimIds,
    spm: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """A document (tokens + trailing EOD) transformed; the EOD stays its last token."""
    if len(doc) and int(doc[-1]) == eod:
        body = transform_unit(doc[:-1], lengths, ids, spm, rng)
        return np.concatenate((body, doc[-1:]))
    return transform_unit(doc, lengths, ids, spm, rng)


def restore(unit: np.ndarray, ids: FimIds) -> tuple[np.ndarray, bool]:
    """(original tokens, was SPM) of a transformed unit (tests, debugging): the inverse."""
    values = [int(t) for t in unit]
    if values[:1] != [ids.prefix]:
        raise ValueError("not a FIM unit: it does not start with the prefix sentinel")
    suf, mid = values.index(ids.suffix), values.index(ids.middle)
    if suf == 1:  # SPM: [PRE][SUF] suffix [MID] prefix middle (the prefix+middle run is intact)
        return np.concatenate((unit[mid + 1 :], unit[2:mid])), True
    return np.concatenate((unit[1:suf], unit[mid + 1 :], unit[suf + 1 : mid])), False
