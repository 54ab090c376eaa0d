"""objective=llava samples: a map-style dataset over image-text shards (docs/data_format.md).

The shards are read through their offset index (`shard_NNNNN.idx.npy`: byte offset and size of
each PNG and of each caption's int32 ids inside the tar), with np.memmap; nothing scans a tar.
Sample `i` of a split is a pure function of (seed, split, i): epoch e = i // N visits the N
samples in a permutation drawn from (seed, split, e), so `pretrain.data.micro_batches`
positioned at state.consumed_samples continues a resumed run exactly.

Layout (LLAVA_BATCH_KEYS, text tensors [train.seq_length]): tokens = [<image>] + caption (cut
to seq_length - 2 tokens) + [eod], right-padded with the pad id; labels = tokens shifted left
by one (pad after the end); loss_mask = 1 on the positions whose label is a caption token or
the final eod, i.e. text positions 0 .. len(caption); position_ids = 0 .. seq_length - 1;
images = float32 [3, S, S] normalised to [-1, 1] (all zeros with vision.blank_images).
Position 0 is the <image> token: LLaVAModel replaces it with the image embeddings, and its
label (the first caption token) becomes the last image embedding's (`pretrain.vlm.loss`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import ConfigError, PretrainConfig
from pretrain.data import BATCH_KEYS

log = logging.getLogger("pretrain")

LLAVA_BATCH_KEYS = (*BATCH_KEYS, "images")
"""The tensors of one objective=llava micro-batch (text [b, seq_length], images [b, 3, S, S])."""


@dataclass(frozen=True)
class SampleLayout:
    """The ids and sizes a sample is laid out with."""

    seq_length: int
    """train.seq_length (text positions, the <image> token included)."""
    image_token: int
    """The tokenizer's id of vision.image_token."""
    eod: int
    """End-of-caption id."""
    pad: int
    """Padding id (the tokenizer's <pad>)."""
    blank_images: bool = False
    """vision.blank_images: every image is zeros."""


def text_tensors(ids: np.ndarray, layout: SampleLayout) -> dict[str, torch.Tensor]:
    """tokens, labels, loss_mask, position_ids of one caption (see the module docstring)."""
    s = layout.seq_length
    caption = np.asarray(ids, dtype=np.int64)[: s - 2]
    text = np.concatenate([[layout.image_token], caption, [layout.eod]]).astype(np.int64)
    tokens = np.full(s, layout.pad, dtype=np.int64)
    tokens[: len(text)] = text
    labels = np.full(s, layout.pad, dtype=np.int64)
    labels[: len(text) - 1] = text[1:]
    loss_mask = np.zeros(s, dtype=np.float32)
    loss_mask[: len(text) - 1] = 1.0
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.arange(s, dtype=torch.int64),
    }


class ShardIndex:
    """Every sample of a list of image-text directories: (tar path, PNG span, ids span)."""

    def __init__(self, manifests: list[dict[str, Any]]) -> None:
        tars: list[Path] = []
        rows = []
        for manifest in manifests:
            root = Path(manifest["dir"])
            for shard in manifest["image_text"]["shards"]:
                index = np.load(root / shard["index"], allow_pickle=False)
                rows.append(np.column_stack([np.full(len(index), len(tars)), index]))
                tars.append(root / shard["tar"])
        self.tars = tars
        self.rows = np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 5), np.int64)
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _bytes(self, tar: int, offset: int, size: int) -> bytes:
        if tar not in self._maps:
            self._maps[tar] = np.memmap(self.tars[tar], dtype=np.uint8, mode="r")
        return self._maps[tar][offset : offset + size].tobytes()

    def caption_ids(self, i: int) -> np.ndarray:
        """The caption token ids of sample `i` (int32 little-endian in the tar)."""
        tar, _, _, off, size = (int(x) for x in self.rows[i])
        return np.frombuffer(self._bytes(tar, off, size), dtype="<i4")

    def caption_lengths(self) -> np.ndarray:
        """Caption tokens of every sample (from the index alone)."""
        return self.rows[:, 4] // 4

    def image(self, i: int) -> torch.Tensor:
        """Sample `i`'s image, float32 [3, S, S] in [-1, 1]."""
        from PIL import Image

        from pretrain.vlm.images import to_tensor

        tar, off, size, _, _ = (int(x) for x in self.rows[i])
        with Image.open(io.BytesIO(self._bytes(tar, off, size))) as img:
            img.load()
            return to_tensor(img.convert("RGB"))


class ImageTextDataset:
    """`dataset[i]` = sample `order(i)` of the split (LLAVA_BATCH_KEYS tensors).

    `members` are the split's indices into the ShardIndex; `length` is how many positions the
    run asks for (whole epochs); any i >= 0 is valid (a new epoch every len(members))."""

    def __init__(
        self,
        shards: ShardIndex,
        members: np.ndarray,
        layout: SampleLayout,
        seed: int,
        split: int,
        length: int,
    ) -> None:
        self.shards, self.members, self.layout = shards, members, layout
        self.seed, self.split = seed, split
        n = len(members)
        self.length = max(n, -(-length // n) * n)
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def order(self, i: int) -> int:
        """The ShardIndex row of position `i` (per-epoch permutation from seed and split)."""
        n = len(self.members)
        epoch, k = divmod(int(i), n)
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, self.split, epoch])
            self._epoch = (epoch, rng.permutation(n))
        return int(self.members[self._epoch[1][k]])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.order(i)
        sample = text_tensors(self.shards.caption_ids(row), self.layout)
        s = self.shards
        image = s.image(row)
        sample["images"] = torch.zeros_like(image) if self.layout.blank_images else image
        return sample


def split_members(count: int, split: str) -> list[np.ndarray]:
    """[train, valid, test] index ranges of `count` samples by data.split shares (contiguous,
    as megatron splits documents)."""
    shares = np.array([float(x) for x in str(split).split(",")], dtype=np.float64)
    bounds = np.concatenate([[0.0], np.cumsum(shares / shares.sum())])
    cuts = [int(round(b * count)) for b in bounds]
    return [np.arange(cuts[i], cuts[i + 1], dtype=np.int64) for i in range(3)]


def sample_layout(cfg: PretrainConfig, manifest: dict[str, Any], tokenizer: Any) -> SampleLayout:
    """The run's SampleLayout (ConfigError when the tokenizer has no pad or image piece)."""
    from pretrain.special_tokens import piece_ids

    image = piece_ids(manifest, {"vision.image_token": cfg.vision.image_token})
    if tokenizer.pad < 0:
        raise ConfigError(
            f"data.paths[0]={cfg.data.paths[0]}: objective=llava pads captions with the "
            "tokenizer's <pad> piece, but its tokenizer has none; prepare the data again with "
            "`python -m data_pipeline` (its tokenizers have <pad>)"
        )
    return SampleLayout(
        seq_length=cfg.train.seq_length,
        image_token=image["vision.image_token"],
        eod=tokenizer.eod,
        pad=tokenizer.pad,
        blank_images=cfg.vision.blank_images,
    )


def build_llava_datasets(
    cfg: PretrainConfig,
    manifests: list[dict[str, Any]],
    tokenizer: Any,
    num_samples: tuple[int, int, int],
) -> list[ImageTextDataset | None]:
    """[train, valid, test] datasets: data.valid_paths as the validation set when given, else
    data.split shares of data.paths (None for an empty split)."""
    from pretrain.data_checks import read_valid_manifests

    layout = sample_layout(cfg, manifests[0], tokenizer)
    shards = ShardIndex(manifests)
    valid_manifests = read_valid_manifests(cfg.data)
    if valid_manifests is None:
        members = split_members(len(shards), cfg.data.split)
        sources = [shards, shards, shards]
    else:
        valid = ShardIndex(valid_manifests)
        members = [np.arange(len(shards)), np.arange(len(valid)), np.arange(0)]
        sources = [shards, valid, valid]
    if len(members[0]) == 0:
        raise ConfigError(
            f"data.split={cfg.data.split} leaves no training samples of the {len(shards)} in "
            "data.paths; give train a larger share"
        )
    cut = int((shards.caption_lengths() > cfg.train.seq_length - 2).sum())
    log.info(
        "objective llava: %d train / %d valid samples, %d-token text + %d image embeddings; "
        "%d captions longer than train.seq_length - 2 = %d tokens are cut",
        len(members[0]),
        len(members[1]),
        cfg.train.seq_length,
        _image_len(cfg),
        cut,
        cfg.train.seq_length - 2,
    )
    return [
        ImageTextDataset(sources[i], members[i], layout, cfg.seed, i, num_samples[i])
        if len(members[i])
        else None
        for i in range(3)
    ]


def _image_len(cfg: PretrainConfig) -> int:
    from pretrain.vlm.model import image_seq_len

    return image_seq_len(cfg.vision)
