"""The contract's preprocessing (RGB, shorter side to S with bicubic, center crop), exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_pipeline.images.process import preprocess


def contract_steps(img: Image.Image, size: int) -> Image.Image:
    """docs/data_format.md, written out literally."""
    img = img.convert("RGB")
    w, h = img.size
    short = min(w, h)
    new = (max(size, round(w * size / short)), max(size, round(h * size / short)))
    img = img.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def test_wide_image_keeps_its_center() -> None:
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 32:] = (0, 0, 255)
    out = np.asarray(preprocess(Image.fromarray(pixels), 32))  # no resize: short side is 32
    assert out.shape == (32, 32, 3)
    assert (out[:, :16] == (255, 0, 0)).all() and (out[:, 16:] == (0, 0, 255)).all()


@pytest.mark.parametrize(
    ("w", "h", "mode", "size"),
    [(45, 30, "RGB", 16), (30, 45, "RGB", 16), (10, 20, "RGB", 16), (33, 17, "L", 8),
     (40, 40, "RGBA", 24), (64, 50, "P", 32), (7, 100, "RGB", 8)],
)  # fmt: skip
def test_matches_the_contract_pixel_for_pixel(w: int, h: int, mode: str, size: int) -> None:
    rng = np.random.default_rng(w * 100 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    out = preprocess(img, size)
    assert out.mode == "RGB" and out.size == (size, size)
    assert np.array_equal(np.asarray(out), np.asarray(contract_steps(img, size)))


def test_upscaled_tall_image_is_cropped_at_the_vertical_center() -> None:
    pixels = np.zeros((20, 10, 3), dtype=np.uint8)
    pixels[:, :] = np.arange(20, dtype=np.uint8)[:, None, None] * 10
    out = preprocess(Image.fromarray(pixels), 16)  # 10x20 -> 16x32, rows 8..23 kept
    ref = Image.fromarray(pixels).resize((16, 32), Image.BICUBIC).crop((0, 8, 16, 24))
    assert np.array_equal(np.asarray(out), np.asarray(ref))
