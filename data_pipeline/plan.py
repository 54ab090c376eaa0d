"""Deterministic assignment of input byte ranges to shards, and of shards to Slurm slices.

The inputs, laid end to end, form one byte space of `total` bytes; shard k owns the records that
*start* in [k*total//N, (k+1)*total//N). Files that cannot be read from the middle (.gz, .zst,
whole-file text documents) go entirely to the shard holding their first byte. The plan depends
only on the input list and N, never on the worker count or slicing, so any job computing shard k
writes the same bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import dataclass, field

from data_pipeline.listing import Source


@dataclass(frozen=True)
class Piece:
    """Records of `sources[source]` starting in bytes [start, end)."""

    source: int
    start: int
    end: int


@dataclass
class ShardPlan:
    """What shard `index` is made of."""

    index: int
    pieces: list[Piece] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """File prefix relative to the output dir (shard_00000)."""
        return f"shard_{self.index:05d}"

    def input_bytes(self) -> int:
        """Planned raw input bytes (compressed size for .gz/.zst)."""
        return sum(p.end - p.start for p in self.pieces)

    def fingerprint(self, sources: list[Source], settings: dict) -> str:
        """Hash of everything that decides this shard's bytes (inputs, ranges, read settings)."""
        desc = {
            "pieces": [
                [
                    sources[p.source].path,
                    sources[p.source].size,
                    sources[p.source].kind,
                    sources[p.source].record_kind,
                    p.start,
                    p.end,
                ]
                for p in self.pieces
            ],
            "settings": settings,
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def num_shards_for(sources: list[Source], num_shards: int, shard_input_mb: float) -> int:
    """output.num_shards, or one shard per output.shard_input_mb of input when it is 0."""
    if num_shards > 0:
        return num_shards
    total = sum(s.size for s in sources)
    return max(1, math.ceil(total / (shard_input_mb * 1e6)))


def plan_shards(sources: list[Source], num_shards: int) -> list[ShardPlan]:
    """Shards in order; planned slots that receive no piece are dropped, the rest renumbered."""
    total = sum(s.size for s in sources)
    bounds = [k * total // num_shards for k in range(num_shards + 1)]

    def slot_of(position: int) -> int:
        return min(max(bisect.bisect_right(bounds, position) - 1, 0), num_shards - 1)

    slots: list[list[Piece]] = [[] for _ in range(num_shards)]
    offset = 0
    for i, src in enumerate(sources):
        lo, hi = offset, offset + src.size
        if src.splittable and src.size > 0:
            for k in range(slot_of(lo), slot_of(hi - 1) + 1):
                start, end = max(lo, bounds[k]) - lo, min(hi, bounds[k + 1]) - lo
                if start < end:
                    slots[k].append(Piece(i, start, end))
        else:
            slots[slot_of(lo)].append(Piece(i, 0, src.size))
        offset = hi
    plans = [ShardPlan(index=0, pieces=pieces) for pieces in slots if pieces]
    for k, plan in enumerate(plans):
        plan.index = k
    return plans


def slice_of(plans: list[ShardPlan], index: int, count: int) -> list[ShardPlan]:
    """The contiguous run of shards that slice `index` of `count` builds."""
    n = len(plans)
    return plans[index * n // count : (index + 1) * n // count]
