"""objective=mlm samples on the real prepared data (pretrain/mlm/dataset.py), in-process.

The train split is asked for 2.5 epochs of windows. megatron's GPTDataset reshuffles the
documents every epoch, so most windows are cut differently, but some (e.g. those starting a
document at the same offset) come again under another index: the repeat has the same tokens
and a new mask (dynamic masking); reading any index again gives the same mask.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.data import SentencePieceTokenizer
from pretrain.data_checks import read_manifest
from pretrain.mlm.dataset import MlmDataset, build_mlm_datasets, window_tokens
from tests.sft._inproc import compose

SEQ = 64


def _build(data: Path, train_samples: int) -> list[MlmDataset | None]:
    cfg = compose(["objective=mlm", f"data.paths=[{data}]", f"train.seq_length={SEQ}"])
    manifest = read_manifest(data)
    return build_mlm_datasets(
        cfg, [manifest], SentencePieceTokenizer(manifest), (train_samples, 8, 0)
    )


@pytest.fixture(scope="module")
def two_epochs(prepared_data: Path) -> MlmDataset:
    """The train split with at least two epochs of windows."""
    one = _build(prepared_data, 1)[0]  # each shard's GPTDataset holds one epoch of windows
    epoch = sum(len(shard) for shard in one.windows.datasets)
    dataset = _build(prepared_data, 5 * epoch // 2)[0]
    assert dataset is not None and len(dataset) >= 2 * epoch
    return dataset


def test_samples_are_cls_window_sep_with_labels_the_original(two_epochs: MlmDataset):
    spec = two_epochs.spec
    for index in range(0, 200, 7):
        item = two_epochs[index]
        assert set(item) == {"tokens", "labels", "loss_mask", "attention_mask"}
        assert all(v.shape == (SEQ,) for v in item.values())
        window = window_tokens(two_epochs.windows, index)
        assert window.shape == (SEQ - 2,)
        expected = np.concatenate([[two_epochs.cls], window, [two_epochs.sep]])
        assert torch.equal(item["labels"], torch.from_numpy(expected))
        selected = item["loss_mask"].bool()
        assert not spec.special[item["labels"][selected].numpy()].any()
        assert torch.equal(item["tokens"][~selected], item["labels"][~selected])
        assert bool((item["attention_mask"] == 1).all())  # no padding inside the data


def test_windows_tile_the_token_stream_without_overlap(prepared_data: Path):
    """Consecutive windows of one shard's stream neither repeat nor skip a token."""
    dataset = _build(prepared_data, 1)[0]
    shard = dataset.windows.datasets[0]  # two shards: a BlendedDataset of two GPTDatasets
    order = np.argsort(shard.shuffle_index[: len(shard)])[:3]  # the first three windows
    first, second, third = (window_tokens(shard, int(i)) for i in order)
    doc = shard.dataset.get(int(shard.document_index[0]))
    stream = np.concatenate([doc, shard.dataset.get(int(shard.document_index[1]))])
    assert np.array_equal(np.concatenate([first, second, third]), stream[: 3 * (SEQ - 2)])


def test_mask_is_deterministic_and_new_in_every_epoch(two_epochs: MlmDataset, prepared_data):
    again = _build(prepared_data, len(two_epochs))[0]
    for index in (0, 1, len(two_epochs) - 1):
        a, b = two_epochs[index], again[index]
        assert all(torch.equal(a[k], b[k]) for k in a), f"sample {index} differs between builds"
    seen: dict[bytes, list[int]] = defaultdict(list)
    for index in range(len(two_epochs)):
        seen[window_tokens(two_epochs.windows, index).tobytes()].append(index)
    repeats = [indices for indices in seen.values() if len(indices) >= 2]
    # megatron reshuffles the documents every epoch, so windows are cut anew; some come again
    assert len(repeats) >= 10, f"only {len(repeats)} windows repeat over the epochs"
    for first, later, *_ in repeats:
        a, b = two_epochs[first], two_epochs[later]
        assert torch.equal(a["labels"], b["labels"])
        assert not torch.equal(a["loss_mask"], b["loss_mask"]), (
            f"window of samples {first} and {later} got the same mask in another epoch"
        )
