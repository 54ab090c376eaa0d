"""The FIM transformation itself (pretrain.fim.transform), in-process.

Exactness: a transformed unit is the original tokens reordered plus exactly one of each of the
three sentinels (multiset equality) and `restore` gives the original back, for PSM and SPM and
many seeds. Split points are drawn over characters, not tokens. Decisions are deterministic.
Statistical checks use 4 binomial standard deviations (false alarm ~6e-5 per check).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pretrain.fim.transform import (
    FimIds,
    permute,
    restore,
    split_points,
    transform_document,
    transform_unit,
    unit_draws,
    unit_rng,
)

IDS = FimIds(prefix=4, middle=5, suffix=6, pad=7)
EOD = 2
SIGMAS = 4.0


def within(observed: int, trials: int, p: float) -> bool:
    """`observed` successes of `trials` are within SIGMAS binomial sigmas of p * trials."""
    sigma = (trials * p * (1 - p)) ** 0.5
    return abs(observed - trials * p) <= SIGMAS * sigma


def _sentinel_free_tokens(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(9, 500, size=size).astype(np.uint16)


@pytest.mark.parametrize("spm", [False, True])
def test_permutation_plus_sentinels_and_restore(spm: bool) -> None:
    lengths = np.random.default_rng(0).integers(1, 12, size=512)
    for seed in range(300):
        data_rng = np.random.default_rng(seed)
        tokens = _sentinel_free_tokens(data_rng, int(data_rng.integers(0, 60)))
        out = transform_unit(tokens, lengths, IDS, spm, unit_rng(seed, 7, seed))
        assert out.dtype == tokens.dtype and len(out) == len(tokens) + 3
        assert Counter(out.tolist()) == Counter(tokens.tolist()) + Counter([4, 5, 6])
        back, _ = restore(out, IDS)
        assert back.tolist() == tokens.tolist()
        assert out[0] == IDS.prefix
        if spm:
            assert out[1] == IDS.suffix


def test_layouts_are_psm_and_spm() -> None:
    tokens = np.arange(10, 20)
    psm = permute(tokens, 3, 7, False, IDS).tolist()
    spm = permute(tokens, 3, 7, True, IDS).tolist()
    assert psm == [4, 10, 11, 12, 6, 17, 18, 19, 5, 13, 14, 15, 16]
    assert spm == [4, 6, 17, 18, 19, 5, 10, 11, 12, 13, 14, 15, 16]


def test_document_keeps_its_trailing_eod_last() -> None:
    lengths = np.ones(512, dtype=np.int64)
    for seed in range(100):
        doc = np.concatenate((_sentinel_free_tokens(np.random.default_rng(seed), 30), [EOD]))
        out = transform_document(doc, EOD, lengths, IDS, seed % 2 == 1, unit_rng(1, 2, seed))
        assert out[-1] == EOD and EOD not in out[:-1].tolist()
        back, _ = restore(out[:-1], IDS)
        assert back.tolist() == doc[:-1].tolist()
    empty = transform_document(np.array([EOD]), EOD, lengths, IDS, False, unit_rng(1, 2, 3))
    assert empty.tolist() == [4, 6, 5, EOD]


def test_split_points_are_uniform_over_characters_not_tokens() -> None:
    # one 100-character token, then 100 one-character tokens: 200 characters, 101 tokens.
    lengths = np.array([100] + [1] * 100)
    trials = 20000
    inside_long = 0
    prefix_chars = []
    for key in range(trials):
        first, second = split_points(lengths, unit_rng(5, 0, key))
        assert 0 <= first <= second <= len(lengths)
        inside_long += first == 0
        prefix_chars.append(int(lengths[:first].sum()))
    # char-uniform: the prefix is empty when the smaller of two draws in [0, 200] hits the long
    # token's 100 characters: 1 - (101/201)^2 = 0.7475 (token-uniform would give 0.0195)
    p_char = 1 - (101 / 201) ** 2
    assert within(inside_long, trials, p_char), inside_long / trials
    # beyond the long token, every character position is a token start: the prefix length is
    # the smaller draw itself, uniform per character (P(min = c) = (2(201 - c) - 1) / 201^2)
    for c in (100, 150, 199):
        p = (2 * (201 - c) - 1) / 201**2
        assert within(prefix_chars.count(c), trials, p), (c, prefix_chars.count(c) / trials)


def test_split_points_of_one_character_tokens_are_the_drawn_characters() -> None:
    lengths = np.ones(50, dtype=np.int64)
    for key in range(200):
        chars = np.sort(unit_rng(9, 1, key).integers(0, 51, size=2))
        assert split_points(lengths, unit_rng(9, 1, key)) == (int(chars[0]), int(chars[1]))


def test_draws_are_deterministic_and_seed_dependent() -> None:
    keys = np.arange(100_000)
    first, spm = unit_draws(1234, 11, keys)
    again, spm_again = unit_draws(1234, 11, keys)
    assert np.array_equal(first, again) and np.array_equal(spm, spm_again)
    other, _ = unit_draws(1235, 11, keys)
    salted, _ = unit_draws(1234, 12, keys)
    assert (first != other).mean() > 0.999 and (first != salted).mean() > 0.999
    assert ((first >= 0) & (first < 1)).all()
    # one key on its own draws what it draws among many (random access)
    assert unit_draws(1234, 11, np.array([77_777]))[0][0] == first[77_777]
    for rate in (0.1, 0.5, 0.9):
        assert within(int((first < rate).sum()), len(keys), rate)
        both = int(((first < rate) & (spm < 0.5)).sum())
        assert within(both, int((first < rate).sum()), 0.5)
    assert abs(np.corrcoef(first, spm)[0, 1]) < 4 / len(keys) ** 0.5
    tokens = np.arange(10, 60)
    lengths = np.ones(100, dtype=np.int64)
    a = transform_unit(tokens, lengths, IDS, False, unit_rng(1, 2, 3))
    b = transform_unit(tokens, lengths, IDS, False, unit_rng(1, 2, 3))
    outs = {
        tuple(transform_unit(tokens, lengths, IDS, False, unit_rng(s, 2, 3))) for s in range(20)
    }
    assert a.tolist() == b.tolist() and len(outs) > 10
