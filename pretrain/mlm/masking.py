"""RoBERTa-style dynamic masking of one sample, deterministic for (seed, split, sample index).

Each non-special token (not CLS/SEP/EOD/pad/mask, no control piece of the tokenizer, not
<unk>) is selected for prediction with probability `mask_rate`, independently (Bernoulli).
Of the selected tokens a share `mask_token_rate` becomes the mask id, `random_token_rate` a
uniformly drawn non-special id, and the rest keep their token. The labels are the original
tokens; the loss mask is the selection.

The random numbers come from a numpy Generator seeded by (seed, split, global sample index),
so a sample reads the same whatever the layout, the batch it lands in, or a resume; megatron's
GPTDataset spans several epochs by index, so a window read again in a later epoch has another
index and gets a new mask (dynamic masking). Every draw is made for every position, so the
masks of two samples never depend on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SALT = 0x6D6C6D  # "mlm": keeps these streams apart from any other (seed, index) generator


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs: the rates, the mask id and which ids are never selected."""

    mask_rate: float
    """Probability that a candidate token is selected for prediction."""
    mask_token_rate: float
    """Of the selected tokens: the share replaced by `mask_id`."""
    random_token_rate: float
    """Of the selected tokens: the share replaced by a random id from `random_ids`."""
    mask_id: int
    """The tokenizer's mask piece."""
    special: np.ndarray
    """Boolean [vocab_size]: True for ids that are never selected (and never drawn)."""

    @property
    def random_ids(self) -> np.ndarray:
        """The ids a random replacement draws from (uniformly): every non-special id."""
        return np.flatnonzero(~self.special)


def special_table(vocab_size: int, ids: list[int]) -> np.ndarray:
    """Boolean [vocab_size] table with True at `ids` (ids outside the vocabulary are ignored)."""
    table = np.zeros(vocab_size, dtype=bool)
    inside = [i for i in ids if 0 <= i < vocab_size]
    table[inside] = True
    return table


def sample_generator(seed: int, split: int, index: int) -> np.random.Generator:
    """The generator of one sample: (seed, split, global sample index) -> independent stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([SALT, seed, split, index])))


@dataclass(frozen=True)
class Masked:
    """One masked sample (numpy int64 / bool arrays of the sample's length)."""

    inputs: np.ndarray
    """The model's input: the sample with the selected tokens replaced or kept."""
    labels: np.ndarray
    """The original sample."""
    selected: np.ndarray
    """True where the loss counts (the selected tokens)."""


def mask_sample(tokens: np.ndarray, spec: MaskingSpec, rng: np.random.Generator) -> Masked:
    """Dynamic masking of `tokens` (int ids < vocab size) with the draws of `rng`."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.shape[0]
    choose, action = rng.random(n), rng.random(n)
    pool = spec.random_ids
    replacement = pool[rng.integers(0, pool.shape[0], size=n)]
    selected = (~spec.special[tokens]) & (choose < spec.mask_rate)
    to_mask = selected & (action < spec.mask_token_rate)
    to_random = selected & ~to_mask & (action < spec.mask_token_rate + spec.random_token_rate)
    inputs = tokens.copy()
    inputs[to_mask] = spec.mask_id
    inputs[to_random] = replacement[to_random]
    return Masked(inputs=inputs, labels=tokens, selected=selected)
