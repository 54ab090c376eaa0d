"""The FIM datasets over the real `prepared_data` directory, in-process (pretrain.fim.dataset).

level=document: every document training sees is the original document or its FIM form (the
same tokens + 3 sentinels, EOD last), and the observed rate / SPM share match data.fim. Samples
are full seq_length (+1) windows. level=context: a transformed window is the plain window's
tokens + 3 sentinels; an untransformed one ends in 3 pad sentinels that are out of the loss.
FIM and plain index caches never mix. Binomial checks: 4 standard deviations.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import index_cache
from pretrain.config import DataConfig, FimConfig
from pretrain.data import SentencePieceTokenizer, build_datasets, fim_spec
from pretrain.data_checks import read_manifest
from pretrain.fim.dataset import FimContextDataset, FimIndexedDataset
from pretrain.fim.transform import char_lengths, restore
from tests.fim.test_transform import within

SEQ = 64
SIZES = (400, 16, 16)


@pytest.fixture(scope="module")
def manifest(prepared_data: Path) -> dict:
    return read_manifest(prepared_data)


@pytest.fixture(scope="module")
def tokenizer(manifest: dict) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(manifest)


def _data(prepared_data: Path, **fim: object) -> DataConfig:
    return DataConfig(paths=[str(prepared_data)], fim=FimConfig(**fim))


def _build(prepared_data, manifest, tokenizer, seed=1234, sizes=SIZES, **fim):
    return build_datasets(_data(prepared_data, **fim), [manifest], tokenizer, SEQ, seed, sizes)


def _ids(prepared_data, manifest, tokenizer):
    return fim_spec(_data(prepared_data, rate=0.5), manifest, tokenizer, 0).ids


def _shards(train) -> list:
    return [d.dataset for d in train.datasets]


def test_char_lengths_of_the_real_tokenizer(tokenizer: SentencePieceTokenizer) -> None:
    sp = tokenizer.processor
    lengths = char_lengths(sp)
    assert len(lengths) == sp.get_piece_size() and lengths.min() >= 1
    for ident in range(sp.get_piece_size()):
        piece = sp.id_to_piece(ident)
        if sp.is_byte(ident) or sp.is_control(ident) or sp.is_unknown(ident):
            assert lengths[ident] == 1, piece
        else:  # '▁' (the word-boundary mark) is one character, like the space it encodes
            assert lengths[ident] == len(piece) == len(piece.replace("▁", " ")), piece
    assert max(lengths) > 2  # the table is not trivially all ones


def test_documents_are_their_tokens_plus_sentinels_at_the_rate(
    prepared_data, manifest, tokenizer
) -> None:
    ids = _ids(prepared_data, manifest, tokenizer)
    rate, spm_rate = 0.5, 0.5
    train = _build(prepared_data, manifest, tokenizer, rate=rate, spm_rate=spm_rate)[0]
    docs = transformed = spm = 0
    for shard in _shards(train):
        assert isinstance(shard, FimIndexedDataset)
        for idx in range(len(shard)):
            plain, seen = shard.base.get(idx), shard.document(idx)
            assert len(seen) == shard.sequence_lengths[idx]
            assert np.array_equal(shard.get(idx, 5, 7), seen[5:12])  # random slices
            docs += 1
            if not shard.transformed[idx]:
                assert np.array_equal(seen, plain)
                continue
            transformed += 1
            spm += int(shard.spm[idx])
            extra = Counter([ids.prefix, ids.middle, ids.suffix])
            assert Counter(seen.tolist()) == Counter(plain.tolist()) + extra
            assert seen[-1] == plain[-1] == tokenizer.eod
            back, _ = restore(seen[:-1], ids)
            assert back.tolist() == plain[:-1].tolist()
            if shard.spm[idx]:
                assert seen[1] == ids.suffix
    assert docs == sum(s["num_docs"] for s in manifest["shards"])
    assert within(transformed, docs, rate) and 0 < transformed < docs
    assert within(spm, transformed, spm_rate)


def test_document_level_samples_are_full_windows(prepared_data, manifest, tokenizer) -> None:
    train = _build(prepared_data, manifest, tokenizer, rate=0.9)[0]
    ids = _ids(prepared_data, manifest, tokenizer)
    seen = Counter()
    # every sample of each shard's dataset (at least one whole epoch of its documents), so
    # every transformed document's sentinels are seen whatever the shuffle order
    for shard in train.datasets:
        for i in range(len(shard)):
            sample = shard[i]
            assert sample["tokens"].shape == sample["labels"].shape == (SEQ,)
            assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
            assert sample["loss_mask"].all()  # sentinels are in the loss
            seen.update(sample["tokens"].tolist())
    assert seen[ids.prefix] > 0 and seen[ids.middle] > 0 and seen[ids.suffix] > 0
    assert seen[ids.pad] == 0
    plain = _build(prepared_data, manifest, tokenizer)[0]
    extra = sum(3 * int(s.transformed.sum()) for s in _shards(train))
    lengths = sum(int(s.sequence_lengths.sum()) for s in _shards(train))
    assert lengths == sum(int(s.sequence_lengths.sum()) for s in _shards(plain)) + extra


def test_context_level_windows(prepared_data, manifest, tokenizer) -> None:
    rate = 0.5
    ids = _ids(prepared_data, manifest, tokenizer)
    train = _build(prepared_data, manifest, tokenizer, rate=rate, level="context")[0]
    # the plain windows of seq_length - 3 (+1) the context windows are made of
    plain = build_datasets(_data(prepared_data), [manifest], tokenizer, SEQ - 3, 1234, SIZES)[0]
    windows = transformed = 0
    for fim_shard, plain_shard in zip(train.datasets, plain.datasets, strict=True):
        assert isinstance(fim_shard, FimContextDataset)
        for idx in range(len(fim_shard)):
            window = fim_shard.window(idx)
            text, _ = plain_shard._query_document_sample_shuffle_indices(idx)
            assert len(window) == SEQ + 1
            windows += 1
            sample = fim_shard[idx]
            if window[0] == ids.prefix:
                transformed += 1
                assert Counter(window.tolist()) == Counter(text.tolist()) + Counter([4, 5, 6])
                assert restore(window, ids)[0].tolist() == text.tolist()
                assert sample["loss_mask"].all()
            else:
                assert window[:-3].tolist() == text.tolist()
                assert window[-3:].tolist() == [ids.pad] * 3
                assert sample["loss_mask"][-3:].tolist() == [0.0, 0.0, 0.0]
                assert sample["loss_mask"][:-3].all()
                assert sample["labels"][-3:].tolist() == [ids.pad] * 3
            assert sample["tokens"].shape == (SEQ,)
            assert torch.equal(sample["position_ids"], torch.arange(SEQ))
    assert windows > 5000  # the statistics below are over thousands of real windows
    assert within(transformed, windows, rate)


def test_same_seed_same_samples_other_seed_other_transforms(
    prepared_data, manifest, tokenizer
) -> None:
    for level in ("document", "context"):
        one = _build(prepared_data, manifest, tokenizer, rate=0.5, level=level)[0]
        two = _build(prepared_data, manifest, tokenizer, rate=0.5, level=level)[0]
        for i in (0, 7, 123, len(one) - 1):  # any order: random access
            assert torch.equal(one[i]["tokens"], two[i]["tokens"])
    a = _shards(_build(prepared_data, manifest, tokenizer, rate=0.5)[0])
    b = _shards(_build(prepared_data, manifest, tokenizer, seed=99, rate=0.5)[0])
    assert any(not np.array_equal(x.transformed, y.transformed) for x, y in zip(a, b, strict=True))


def test_fim_and_plain_index_caches_never_mix(prepared_data, manifest, tokenizer, tmp_path) -> None:
    key = fim_spec(_data(prepared_data, rate=0.5), manifest, tokenizer, 1).unique_identifiers
    plain = index_cache.cache_folder(str(tmp_path), [manifest], "98,1,1", SEQ, 1)
    fim = index_cache.cache_folder(str(tmp_path), [manifest], "98,1,1", SEQ, 1, key)
    other = index_cache.cache_folder(
        str(tmp_path), [manifest], "98,1,1", SEQ, 1, dict(key, rate=0.6)
    )
    assert len({plain, fim, other}) == 3
    # and megatron's unique description (index file names, checked description) holds them
    descriptions = set()
    for rate in (0.5, 0.6):
        shard = _build(prepared_data, manifest, tokenizer, rate=rate)[0].datasets[0]
        assert '"spm_rate": 0.5' in shard.unique_description
        descriptions.add(shard.unique_description_hash)
    assert len(descriptions) == 2
    # the same folder used by both (description check): file names differ by the FIM settings
    shared = tmp_path / "cache"
    for fim_cfg in ({}, {"rate": 0.5}, {"rate": 0.5, "level": "context"}):
        cfg = _data(prepared_data, **fim_cfg)
        cfg.cache_dir = str(shared)
        build_datasets(cfg, [manifest], tokenizer, SEQ, 1234, SIZES)
    names = sorted(p.name for p in shared.rglob("*-train-description.txt"))
    assert len(names) == 3 * len(manifest["shards"]), names
    cached = _data(prepared_data, rate=0.5)
    cached.cache_dir = str(shared)
    again = build_datasets(cached, [manifest], tokenizer, SEQ, 1234, SIZES)[0]
    fresh = _build(prepared_data, manifest, tokenizer, rate=0.5)[0]
    for i in (0, 50, len(fresh) - 1):
        assert torch.equal(again[i]["tokens"], fresh[i]["tokens"])
