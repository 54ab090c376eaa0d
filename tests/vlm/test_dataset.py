"""The objective=llava dataset over image-text shards: sample layout, order, splits, images.

The shards are read back independently with `tarfile` (member K.png / K.ids by name), so the
dataset's offset-index reads are checked against the tar's own directory.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import torch
from PIL import Image

from pretrain.data import SentencePieceTokenizer, micro_batches
from pretrain.data_checks import read_manifest
from pretrain.vlm.dataset import LLAVA_BATCH_KEYS, SampleLayout, build_llava_datasets, text_tensors
from pretrain.vlm.images import to_tensor
from tests.sft._inproc import compose

LAYOUT = SampleLayout(seq_length=8, image_token=9, eod=2, pad=3)


def test_sample_layout_masks_exactly_the_caption_and_eod():
    s = text_tensors(np.array([40, 41, 42], dtype="<i4"), LAYOUT)
    assert s["tokens"].tolist() == [9, 40, 41, 42, 2, 3, 3, 3]
    assert s["labels"].tolist() == [40, 41, 42, 2, 3, 3, 3, 3]
    # 1 where the label is a caption token or the eod; never where it is padding
    assert s["loss_mask"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert s["position_ids"].tolist() == list(range(8))
    long = text_tensors(np.arange(100, 120, dtype="<i4"), LAYOUT)  # cut to seq_length - 2
    assert long["tokens"].tolist() == [9, 100, 101, 102, 103, 104, 105, 2]
    assert long["labels"].tolist() == [100, 101, 102, 103, 104, 105, 2, 3]
    assert long["loss_mask"].tolist() == [1] * 7 + [0]


def _members_from_tar(data_dir) -> dict[int, tuple[torch.Tensor, list[int]]]:
    """{global sample index: (image tensor, caption ids)} read by member name with tarfile."""
    found: dict[int, dict[str, bytes]] = {}
    for tar_path in sorted(data_dir.glob("shard_*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                found.setdefault(int(key), {})[ext] = tar.extractfile(member).read()
    out = {}
    for key, parts in found.items():
        with Image.open(io.BytesIO(parts["png"])) as img:
            img.load()
            image = to_tensor(img)
        out[key] = (image, np.frombuffer(parts["ids"], dtype="<i4").tolist())
    return out


def _datasets(data_dir, *extra: str, sizes=(1200, 64, 0)):
    cfg = compose(["objective=llava", f"data.paths=[{data_dir}]", "train.seq_length=32", *extra])
    manifests = [read_manifest(data_dir)]
    return cfg, build_llava_datasets(cfg, manifests, SentencePieceTokenizer(manifests[0]), sizes)


def test_samples_are_the_shards_images_and_captions(image_text_data):
    truth = _members_from_tar(image_text_data)
    assert len(truth) == 600
    _, (train, valid, test) = _datasets(image_text_data, "data.split='90,10,0'")
    assert test is None and len(train.members) == 540 and len(valid.members) == 60
    assert set(train.members.tolist()).isdisjoint(valid.members.tolist())
    for i in (0, 1, 539, 540, 1000):
        row = train.order(i)
        sample = train[i]
        image, ids = truth[row]
        assert sample["images"].shape == (3, 32, 32) and sample["images"].dtype == torch.float32
        assert torch.equal(sample["images"], image)
        assert float(sample["images"].min()) >= -1.0 and float(sample["images"].max()) <= 1.0
        n = len(ids)
        assert sample["tokens"][1 : n + 1].tolist() == ids and sample["tokens"][0] == 9
        assert sample["tokens"][n + 1] == 2 and sample["loss_mask"].sum() == n + 1


def test_order_is_a_seeded_permutation_per_epoch(image_text_data):
    _, (train, _, _) = _datasets(image_text_data, "data.split='90,10,0'")
    _, (again, _, _) = _datasets(image_text_data, "data.split='90,10,0'")
    _, (other, _, _) = _datasets(image_text_data, "data.split='90,10,0'", "seed=7")
    epoch0 = [train.order(i) for i in range(540)]
    epoch1 = [train.order(i) for i in range(540, 1080)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(540))  # every sample once per epoch
    assert epoch0 != epoch1 and epoch0 != list(range(540))
    assert epoch0 == [again.order(i) for i in range(540)]
    assert epoch0 != [other.order(i) for i in range(540)]
    assert len(train) == 1620  # whole epochs covering the 1200 requested samples


def test_micro_batches_resume_at_consumed_samples(image_text_data):
    _, (train, _, _) = _datasets(image_text_data)
    keys = LLAVA_BATCH_KEYS
    full = micro_batches(train, 0, 2, 1, 2, keys)  # DP rank 1 of 2, from the start
    for _ in range(3):
        next(full)
    resumed = next(micro_batches(train, 3 * 4, 2, 1, 2, keys))
    want = next(full)
    assert set(resumed) == set(keys) and resumed["images"].shape == (2, 3, 32, 32)
    for key in keys:
        assert torch.equal(resumed[key], want[key]), key


def test_valid_paths_and_blank_images(image_text_data, image_text_heldout):
    truth = _members_from_tar(image_text_heldout)
    _, (train, valid, _) = _datasets(
        image_text_data, f"data.valid_paths=[{image_text_heldout}]", "vision.blank_images=true"
    )
    assert len(train.members) == 600 and len(valid.members) == 64
    sample = valid[5]
    assert torch.equal(sample["images"], torch.zeros(3, 32, 32))
    ids = truth[valid.order(5)][1]
    assert sample["tokens"][1 : len(ids) + 1].tolist() == ids
