"""The trainer's image preprocessing (docs/data_format.md, "Image-text data").

`preprocess` repeats the data pipeline's steps exactly (pretrain never imports data_pipeline;
tests/vlm/test_images.py compares the two pixel for pixel), so `python -m pretrain.caption`
shows the model an image as training did. `to_tensor` turns the uint8 RGB pixels into the
ViT's input: float32 [3, S, S], scaled to [0, 1], then normalised with mean 0.5 and std 0.5
(-> [-1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

MEAN = 0.5
"""Per-channel mean subtracted after scaling to [0, 1]."""
STD = 0.5
"""Per-channel standard deviation divided by after subtracting MEAN."""


def preprocess(img: Image.Image, size: int) -> Image.Image:
    """RGB, the shorter side resized to `size` (bicubic), then the center `size` x `size` crop.

    The other side becomes `round(side * size / short)` (at least `size`); the crop box starts
    at left = (w - size) // 2, top = (h - size) // 2. An image already `size` x `size` is only
    converted to RGB.
    """
    img = img.convert("RGB")
    w, h = img.size
    short = min(w, h)
    new_w = max(size, round(w * size / short))
    new_h = max(size, round(h * size / short))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """float32 [3, S, S] in [-1, 1] from an RGB image (PIL, or a uint8 [S, S, 3] array)."""
    pixels = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3] RGB pixels, got {pixels.dtype} {pixels.shape}")
    chw = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float() / 255.0
    return (chw - MEAN) / STD


def load_image(path: Path, size: int) -> torch.Tensor:
    """The file at `path` decoded, preprocessed to `size` and normalised ([3, size, size]).

    ValueError naming the file when it is missing or not a readable image.
    """
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return to_tensor(preprocess(img, size))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: not a readable image file ({type(exc).__name__})") from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image file ({exc})") from exc
