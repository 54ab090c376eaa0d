"""Dynamic masking (pretrain/mlm/masking.py): the observed rates match the configured ones.

Synthetic samples over a 512-id vocabulary whose first 9 ids are special, 4000 samples of 64
tokens (~256k tokens, ~38k selected). Every rate is checked within 4 binomial standard
deviations of its expectation (false-failure chance ~6e-5 per check); the expectations account
for a random replacement that happens to draw the original token (it then looks kept).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pretrain.mlm.masking import MaskingSpec, mask_sample, sample_generator, special_table

VOCAB = 512
SPECIAL = list(range(9))  # <unk> <s> </s> <pad> 4 FIM sentinels <mask>
MASK_ID = 8
SAMPLES, LENGTH = 4000, 64
SIGMAS = 4.0


def _spec(mask_rate=0.15, mask_token_rate=0.8, random_token_rate=0.1) -> MaskingSpec:
    return MaskingSpec(
        mask_rate=mask_rate,
        mask_token_rate=mask_token_rate,
        random_token_rate=random_token_rate,
        mask_id=MASK_ID,
        special=special_table(VOCAB, SPECIAL),
    )


def _tokens(rng: np.random.Generator) -> np.ndarray:
    """A sample with ~10% special ids (as EOD separators and pads would be) among text ids."""
    tokens = rng.integers(len(SPECIAL), VOCAB, size=LENGTH)
    specials = rng.random(LENGTH) < 0.1
    tokens[specials] = rng.choice(SPECIAL, size=int(specials.sum()))
    return tokens


def _within(count: int, total: int, p: float, what: str) -> None:
    sigma = math.sqrt(total * p * (1 - p))
    assert abs(count - total * p) <= SIGMAS * sigma, (
        f"{what}: {count}/{total} = {count / total:.4f}, expected {p:.4f} +- {SIGMAS} sigma"
    )


def _mask_many(spec: MaskingSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    data = np.random.default_rng(7)
    rows = [
        (tokens, mask_sample(tokens, spec, sample_generator(1234, 0, i)))
        for i, tokens in enumerate(_tokens(data) for _ in range(SAMPLES))
    ]
    tokens = np.stack([t for t, _ in rows])
    inputs = np.stack([m.inputs for _, m in rows])
    labels = np.stack([m.labels for _, m in rows])
    selected = np.stack([m.selected for _, m in rows])
    return tokens, inputs, labels, selected


@pytest.mark.parametrize("rates", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3)])
def test_observed_rates_match_the_configured_ones(rates):
    mask_rate, mask_token_rate, random_token_rate = rates
    spec = _spec(*rates)
    tokens, inputs, labels, selected = _mask_many(spec)
    special = spec.special[tokens]
    assert np.array_equal(labels, tokens), "labels must be the original tokens"
    assert not selected[special].any(), "a special token was selected"
    assert np.array_equal(inputs[~selected], tokens[~selected]), "an unselected token changed"
    _within(int(selected.sum()), int((~special).sum()), mask_rate, "selected share")

    chosen = int(selected.sum())
    masked = selected & (inputs == MASK_ID)
    changed = selected & (inputs != tokens) & (inputs != MASK_ID)
    kept = selected & (inputs == tokens)
    pool = VOCAB - len(SPECIAL)  # a random draw equals the original with chance 1/pool
    _within(int(masked.sum()), chosen, mask_token_rate, "mask-token share of the selected")
    _within(int(changed.sum()), chosen, random_token_rate * (1 - 1 / pool), "random share")
    keep_rate = 1 - mask_token_rate - random_token_rate + random_token_rate / pool
    _within(int(kept.sum()), chosen, keep_rate, "kept share of the selected")
    assert not spec.special[inputs[changed]].any(), "a random replacement drew a special id"
    # the random replacements are spread over the whole non-special vocabulary
    assert len(np.unique(inputs[changed])) > 0.9 * pool


def test_masks_are_a_function_of_seed_split_and_index():
    spec = _spec()
    tokens = _tokens(np.random.default_rng(3))

    def selection(seed: int, split: int, index: int) -> np.ndarray:
        return mask_sample(tokens, spec, sample_generator(seed, split, index)).selected

    assert np.array_equal(selection(1, 0, 5), selection(1, 0, 5))
    others = [selection(2, 0, 5), selection(1, 1, 5), selection(1, 0, 6)]
    assert all(not np.array_equal(selection(1, 0, 5), other) for other in others)


def test_no_selection_without_candidates():
    spec = _spec(mask_rate=0.99)
    tokens = np.array(SPECIAL * 4)
    masked = mask_sample(tokens, spec, sample_generator(1, 0, 0))
    assert not masked.selected.any() and np.array_equal(masked.inputs, tokens)
