"""Instruction examples (tokens + loss mask of every shard) -> packed SFT samples.

Reads the on-disk contract of docs/data_format.md for instruction data: each document of a
token shard `shard_NNNNN` is one example (its tokens, then EOD), and the aligned uint8
indexed dataset `shard_NNNNN.loss_mask` marks its target tokens (1: the model is trained to
predict that token from the ones before it). Both are read with megatron's `IndexedDataset`.

Splits follow megatron's rule for `data.split`: in every shard, the documents
[round(lo x n), round(hi x n)) of each split's bookends (contiguous ranges), or, with
`data.valid_paths`, every document of those directories forms the validation split.

A sample (`SftDataset[i]`, a pure function of i, see `pretrain.sft.packing`) holds
`train.seq_length` input positions: for each packed example of n tokens (truncated to
seq_length + 1), inputs are its tokens[:-1], labels tokens[1:], loss_mask mask[1:] (the mask
of the label token), position_ids 0..n-2, segment_ids its index in the sample; the remaining
positions are padding (pad id, loss mask 0, positions from 0, a segment id of its own).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.sft.packing import PackedIndex, build_packed_index, input_positions

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class Shard:
    """One token shard and its loss mask, opened with megatron's IndexedDataset."""

    tokens: Any
    """megatron IndexedDataset of the token ids."""
    mask: Any
    """megatron IndexedDataset of the uint8 loss mask (same documents and lengths)."""
    name: str
    """`<dir>/<prefix>`, for messages."""


def open_shards(manifests: list[dict[str, Any]]) -> list[Shard]:
    """Every shard of `manifests` (in manifest order), tokens and loss mask."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    shards = []
    for manifest in manifests:
        root = Path(manifest["dir"])
        for entry in manifest["shards"]:
            shards.append(
                Shard(
                    tokens=IndexedDataset(str(root / entry["prefix"])),
                    mask=IndexedDataset(str(root / entry["loss_mask"]["prefix"])),
                    name=str(root / entry["prefix"]),
                )
            )
    return shards


def split_ranges(split: str, num_docs: int) -> list[tuple[int, int] | None]:
    """megatron's document range of each split in a shard of `num_docs` (None: no share)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [
        None
        if bounds is None
        else (int(round(bounds[0] * float(num_docs))), int(round(bounds[1] * float(num_docs))))
        for bounds in matrix
    ]


@dataclass
class Examples:
    """The examples of one split: which shard and document each one is."""

    shards: list[Shard]
    """All opened shards the examples come from."""
    shard: np.ndarray
    """Shard index of each example (int64)."""
    doc: np.ndarray
    """Document index inside its shard (int64)."""

    def __len__(self) -> int:
        return len(self.doc)

    def lengths(self) -> np.ndarray:
        """Tokens of each example (EOD included)."""
        lengths = np.zeros(len(self), dtype=np.int64)
        for index, shard in enumerate(self.shards):
            here = self.shard == index
            lengths[here] = shard.tokens.index.sequence_lengths[self.doc[here]]
        return lengths

    def target_positions(self, capacity: int) -> np.ndarray:
        """Loss-mask-1 labels of each example once truncated to capacity + 1 tokens."""
        counts = np.zeros(len(self), dtype=np.int64)
        for i, (s, d) in enumerate(zip(self.shard.tolist(), self.doc.tolist(), strict=True)):
            counts[i] = int(self.read(s, d, capacity)[1][1:].sum())
        return counts

    def read(self, shard: int, doc: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, loss mask) of one example, truncated to capacity + 1 tokens."""
        source = self.shards[shard]
        length = min(int(source.tokens.index.sequence_lengths[doc]), capacity + 1)
        tokens = source.tokens.get(doc, 0, length)
        mask = source.mask.get(doc, 0, length)
        return tokens.astype(np.int64), mask.astype(np.float32)


def select_examples(shards: list[Shard], split: str | None, which: int) -> Examples:
    """Examples of split `which` (0 train, 1 valid, 2 test); split None: every document."""
    shard_ids, docs = [], []
    for index, shard in enumerate(shards):
        count = len(shard.tokens.index.sequence_lengths)
        if split is None:
            lo, hi = 0, count
        else:
            bounds = split_ranges(split, count)[which]
            if bounds is None:
                continue
            lo, hi = bounds
        docs.append(np.arange(lo, hi, dtype=np.int64))
        shard_ids.append(np.full(hi - lo, index, dtype=np.int64))
    if not docs:
        return Examples(shards, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return Examples(shards, np.concatenate(shard_ids), np.concatenate(docs))


class SftDataset(torch.utils.data.Dataset):
    """Packed (or one-per-sequence) SFT samples of one split; `len` covers `num_samples`."""

    def __init__(
        self,
        examples: Examples,
        seq_length: int,
        seed: int,
        num_samples: int,
        pack: bool,
        pad_id: int,
        name: str = "train",
    ) -> None:
        self.examples = examples
        self.seq_length = seq_length
        self.pad_id = pad_id
        self.name = name
        lengths = examples.lengths()
        self.num_truncated = int((lengths > seq_length + 1).sum())
        positions = input_positions(lengths, seq_length)
        self.index: PackedIndex = build_packed_index(positions, seq_length, seed, num_samples, pack)
        self._positions = positions
        self._targets = examples.target_positions(seq_length)

    def __len__(self) -> int:
        return len(self.index)

    def sample_target_tokens(self) -> np.ndarray:
        """Loss-mask-1 positions of every sample."""
        return self.index.per_sample_sums(self._targets)

    def packing_efficiency(self) -> float:
        """Target positions / all positions over every sample of the dataset."""
        return float(self.sample_target_tokens().sum()) / (len(self) * self.seq_length)

    def fill(self) -> float:
        """Example (non-padding) positions / all positions over every sample."""
        used = self.index.per_sample_sums(self._positions)
        return float(used.sum()) / (len(self) * self.seq_length)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seq = self.seq_length
        tokens = np.full(seq, self.pad_id, dtype=np.int64)
        labels = np.full(seq, self.pad_id, dtype=np.int64)
        loss_mask = np.zeros(seq, dtype=np.float32)
        position_ids = np.zeros(seq, dtype=np.int64)
        segment_ids = np.zeros(seq, dtype=np.int64)
        used = 0
        ids = self.index.examples(int(index))
        for segment, example in enumerate(ids.tolist()):
            ids_, mask = self.examples.read(
                int(self.examples.shard[example]), int(self.examples.doc[example]), seq
            )
            n = len(ids_) - 1
            tokens[used : used + n] = ids_[:-1]
            labels[used : used + n] = ids_[1:]
            loss_mask[used : used + n] = mask[1:]
            position_ids[used : used + n] = np.arange(n)
            segment_ids[used : used + n] = segment
            used += n
        position_ids[used:] = np.arange(seq - used)
        segment_ids[used:] = len(ids)
        return {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(position_ids),
            "segment_ids": torch.from_numpy(segment_ids),
        }


def pad_id_of(manifest: dict[str, Any]) -> int:
    """The manifest's pad id, or its EOD id when the tokenizer has none."""
    info = manifest["tokenizer"]
    pad = int(info.get("pad_id", -1))
    return pad if pad >= 0 else int(info["eod_id"])
