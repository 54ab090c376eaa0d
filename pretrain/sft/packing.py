"""Deterministic packing of instruction examples into fixed-length sequences (pure numpy).

An example of n tokens gives n - 1 input positions (input j, label j + 1). Every epoch visits
each example once, in a permutation seeded by (seed, epoch); `pack=True` then fills sequences
of `capacity` input positions greedily in that order (next-fit: an example that does not fit
starts the next sequence), `pack=False` puts one example in each sequence. The whole index is
built up front from the example lengths alone, so sample i is a pure function of (examples,
seed, capacity, pack, i): a resumed run that starts at consumed_samples reads exactly the
samples an uninterrupted run would have read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def input_positions(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Input positions of each example once truncated to capacity + 1 tokens (n - 1, >= 0)."""
    return np.clip(lengths.astype(np.int64), 1, capacity + 1) - 1


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The examples' order in `epoch`: a permutation seeded by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int64)


def pack_next_fit(positions: np.ndarray, capacity: int) -> np.ndarray:
    """Start offsets (into `positions`) of each sequence when packing them in this order.

    `positions` are the examples' input positions in visiting order, each <= capacity.
    Returns the starts of all sequences plus len(positions) at the end.
    """
    starts = [0]
    used = 0
    for index, n in enumerate(positions.tolist()):
        if used + n > capacity:
            starts.append(index)
            used = 0
        used += n
    starts.append(len(positions))
    return np.asarray(starts, dtype=np.int64)


@dataclass
class PackedIndex:
    """Which examples form each sample: sample i = order[starts[i]:starts[i + 1]]."""

    order: np.ndarray
    """Example ids of all built epochs, in visiting order (int64)."""
    starts: np.ndarray
    """Offsets into `order` where each sample begins, plus a final end offset (int64)."""
    epochs: int
    """Epochs built."""

    def __len__(self) -> int:
        return len(self.starts) - 1

    def examples(self, index: int) -> np.ndarray:
        """Example ids of sample `index` (in packing order)."""
        return self.order[self.starts[index] : self.starts[index + 1]]

    def per_sample_sums(self, per_example: np.ndarray) -> np.ndarray:
        """Sum of `per_example` values over each sample's examples."""
        cumulative = np.concatenate([[0], np.cumsum(per_example[self.order], dtype=np.int64)])
        return cumulative[self.starts[1:]] - cumulative[self.starts[:-1]]


def build_packed_index(
    positions: np.ndarray, capacity: int, seed: int, num_samples: int, pack: bool
) -> PackedIndex:
    """Whole epochs of samples until there are at least `num_samples` (at least one epoch).

    `positions` are the input positions of every example (see `input_positions`); examples
    with none (a lone token) are never visited.
    """
    usable = np.flatnonzero(positions > 0)
    if len(usable) == 0:
        raise ValueError("no example has two or more tokens")
    orders, starts, total, epoch = [], [np.zeros(1, dtype=np.int64)], 0, 0
    offset = 0
    while epoch == 0 or total < num_samples:
        order = usable[epoch_order(len(usable), seed, epoch)]
        if pack:
            bounds = pack_next_fit(positions[order], capacity)
        else:
            bounds = np.arange(len(order) + 1, dtype=np.int64)
        orders.append(order)
        starts.append(bounds[1:] + offset)
        offset += len(order)
        total += len(bounds) - 1
        epoch += 1
    return PackedIndex(np.concatenate(orders), np.concatenate(starts), epoch)
