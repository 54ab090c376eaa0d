"""pretrain.vlm.images: the trainer's preprocessing is the data pipeline's, pixel for pixel,
and `to_tensor` normalises to [-1, 1] (mean 0.5, std 0.5) as float32 [3, S, S]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.images.process import preprocess as pipeline_preprocess
from pretrain.vlm.images import load_image, preprocess, to_tensor


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "P": 1, "LA": 2}[mode]
    w, h = size
    pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, "L" if mode == "P" else mode)
    return img.convert("P") if mode == "P" else img


CASES = [
    ("RGB", (50, 37)),
    ("RGB", (37, 50)),
    ("RGBA", (41, 29)),
    ("L", (33, 64)),
    ("P", (45, 45)),
    ("LA", (17, 23)),  # smaller than the target: upscaled
    ("RGB", (32, 32)),  # already the target size
    ("RGB", (101, 32)),
]


@pytest.mark.parametrize(("mode", "size"), CASES, ids=[f"{m}-{w}x{h}" for m, (w, h) in CASES])
@pytest.mark.parametrize("target", [32, 24])
def test_same_pixels_as_the_data_pipeline(mode: str, size: tuple[int, int], target: int) -> None:
    img = _noise(mode, size, seed=size[0] * 1000 + size[1])
    ours = np.asarray(preprocess(img.copy(), target))
    theirs = np.asarray(pipeline_preprocess(img.copy(), target))
    assert ours.shape == (target, target, 3)
    assert ours.dtype == np.uint8
    assert np.array_equal(ours, theirs)


def test_through_a_file_as_the_caption_cli_reads_it(tmp_path: Path) -> None:
    img = _noise("RGBA", (50, 37), seed=3)
    path = tmp_path / "x.png"
    img.save(path)
    with Image.open(path) as reopened:
        reopened.load()
        expected = to_tensor(pipeline_preprocess(reopened, 32))
    assert torch.equal(load_image(path, 32), expected)


def test_to_tensor_normalises() -> None:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 51)
    pixels[1, 2] = (128, 255, 0)
    out = to_tensor(Image.fromarray(pixels, "RGB"))
    assert out.dtype == torch.float32 and out.shape == (3, 4, 4)
    assert out[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 51 / 255 * 2 - 1], abs=1e-6)
    assert out[:, 1, 2].tolist() == pytest.approx([128 / 255 * 2 - 1, 1.0, -1.0], abs=1e-6)
    assert out[:, 3, 3].tolist() == [-1.0, -1.0, -1.0]
    assert torch.equal(to_tensor(pixels), out)  # a uint8 HWC array gives the same


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "missing.png", 32)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image"):
        load_image(bad, 32)
    truncated = tmp_path / "cut.png"
    _noise("RGB", (40, 40), seed=1).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.png: not a readable image"):
        load_image(truncated, 32)
