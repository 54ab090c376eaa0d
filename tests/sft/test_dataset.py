"""SFT dataset: splits, determinism, pure function of the index, alignment, truncation, packing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pretrain.config import DataConfig, ObjectiveConfig
from pretrain.data_checks import read_manifest
from pretrain.sft.build import build_sft_datasets, split_examples
from pretrain.sft.dataset import SftDataset, open_shards, select_examples
from tests.sft._data import prompt_completion_examples, write_instruct_dir


def _dataset(
    data_dir: Path, seq: int = 64, seed: int = 3, samples: int = 40, pack: bool = True
) -> SftDataset:
    examples = select_examples(open_shards([read_manifest(data_dir)]), None, 0)
    return SftDataset(examples, seq, seed, samples, pack, pad_id=3)


def _same(a: dict, b: dict) -> bool:
    return all(bool((a[k] == b[k]).all()) for k in a)


def test_splits_are_megatron_document_ranges_per_shard(instruct_data, tmp_path):
    shards = open_shards([read_manifest(instruct_data)])  # 40 + 30 documents
    train, valid, test = (select_examples(shards, "90,5,5", w) for w in range(3))
    # megatron: [round(lo * n), round(hi * n)) per shard: 40 -> 36/2/2, 30 -> 27/2/1 (rounding)
    assert train.doc.tolist() == list(range(36)) + list(range(27))
    assert train.shard.tolist() == [0] * 36 + [1] * 27
    assert valid.doc.tolist() == [36, 37, 27, 28] and test.doc.tolist() == [38, 39, 29]
    # data.valid_paths: every document of those dirs is the validation split
    held_out = write_instruct_dir(
        tmp_path / "held", instruct_data, [prompt_completion_examples(instruct_data, 5, seed=9)]
    )
    cfg = DataConfig(paths=[str(instruct_data)], split="90,5,5", valid_paths=[str(held_out)])
    splits = split_examples(cfg, [read_manifest(instruct_data)], [read_manifest(held_out)])
    assert splits[1].doc.tolist() == [0, 1, 2, 3, 4] and len(splits[0]) == 63


def test_deterministic_and_pure_function_of_index(instruct_data):
    one, two = _dataset(instruct_data, samples=80), _dataset(instruct_data, samples=80)
    assert len(one) >= 80 and one.index.epochs >= 2
    for i in range(len(one)):
        assert _same(one[i], two[i]), i
    # random access order does not matter, and a longer dataset starts with the same samples
    longer = _dataset(instruct_data, samples=200)
    for i in np.random.default_rng(0).permutation(len(one)).tolist():
        assert _same(one[i], longer[i]), i
    other_seed = _dataset(instruct_data, seed=4, samples=80)
    assert not all(_same(one[i], other_seed[i]) for i in range(5))


def test_samples_align_with_the_examples_and_positions_restart(prepared_data, tmp_path):
    examples = prompt_completion_examples(prepared_data, 30, seed=1)
    data_dir = write_instruct_dir(tmp_path / "d", prepared_data, [examples[:20], examples[20:]])
    ds = _dataset(data_dir, seq=64, samples=10)
    flat = examples  # example id i of the dataset = i-th document in shard order
    seen = 0
    for i in range(len(ds)):
        sample, ids = ds[i], ds.index.examples(i).tolist()
        segments = sample["segment_ids"].tolist()
        assert len(ids) >= 1 and segments == sorted(segments)
        start = 0
        for k, example in enumerate(ids):
            tokens, mask = flat[example]
            n = len(tokens) - 1
            part = slice(start, start + n)
            assert sample["tokens"][part].tolist() == tokens[:-1]
            assert sample["labels"][part].tolist() == tokens[1:]
            assert sample["loss_mask"][part].tolist() == [float(m) for m in mask[1:]]
            assert sample["position_ids"][part].tolist() == list(range(n))
            assert set(segments[start : start + n]) == {k}
            start += n
            seen += 1
        # padding: pad id, loss mask 0, its own segment, positions from 0
        assert sample["tokens"][start:].tolist() == [3] * (64 - start)
        assert float(sample["loss_mask"][start:].sum()) == 0.0
        assert set(segments[start:]) <= {len(ids)}
        assert sample["position_ids"][start:].tolist() == list(range(64 - start))
    assert seen > len(ds)  # several examples share a sequence


def test_truncation_is_counted_and_keeps_the_first_tokens(prepared_data, tmp_path):
    examples = prompt_completion_examples(prepared_data, 12, seed=2)
    data_dir = write_instruct_dir(tmp_path / "d", prepared_data, [examples])
    ds = _dataset(data_dir, seq=24, samples=1)
    lengths = [len(t) for t, _ in examples]
    assert ds.num_truncated == sum(n > 25 for n in lengths) > 0
    for i in range(len(ds)):
        sample = ds[i]
        start = 0
        for example in ds.index.examples(i).tolist():
            tokens, mask = examples[example]
            n = min(len(tokens), 25) - 1
            assert sample["labels"][start : start + n].tolist() == tokens[1 : n + 1]
            assert sample["loss_mask"][start : start + n].tolist() == mask[1 : n + 1]
            start += n


def test_packing_efficiency_on_a_known_case(prepared_data, tmp_path):
    # 4 examples of 5 tokens (4 input positions), the last 2 tokens targets
    example = ([10, 11, 12, 13, 2], [0, 0, 0, 1, 1])
    data_dir = write_instruct_dir(tmp_path / "d", prepared_data, [[example] * 4])
    packed = _dataset(data_dir, seq=8, samples=1)
    # two examples fill each 8-position sequence: 2 samples, 2 x 2 targets of 8 positions
    assert len(packed) == 2 and packed.fill() == 1.0
    assert packed.packing_efficiency() == pytest.approx(0.5, abs=1e-12)
    unpacked = _dataset(data_dir, seq=8, samples=1, pack=False)
    assert len(unpacked) == 4 and unpacked.fill() == 0.5
    assert unpacked.packing_efficiency() == pytest.approx(0.25, abs=1e-12)
    # 3 examples: next-fit gives [2, 1] -> 6 targets over 16 positions
    three = write_instruct_dir(tmp_path / "t", prepared_data, [[example] * 3])
    assert _dataset(three, seq=8, samples=1).packing_efficiency() == pytest.approx(6 / 16)
    # the per-sample target counts are the samples' loss-mask sums
    ds = _dataset(data_dir, seq=8, samples=7)
    counts = ds.sample_target_tokens()
    assert [float(ds[i]["loss_mask"].sum()) for i in range(len(ds))] == counts.tolist()


def test_build_sft_datasets_logs_efficiency_once(instruct_data, caplog):
    caplog.set_level("INFO", logger="pretrain")
    cfg = DataConfig(paths=[str(instruct_data)], split="90,5,5")
    datasets = build_sft_datasets(
        cfg, ObjectiveConfig(name="sft"), [read_manifest(instruct_data)], None, 64, 1, (24, 8, 8)
    )
    assert all(d is not None for d in datasets) and len(datasets[0]) >= 24
    lines = [r.getMessage() for r in caplog.records if "packing efficiency" in r.getMessage()]
    assert len(lines) == 3 and lines[0].startswith("sft train:")
