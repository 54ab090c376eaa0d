"""Decoding and preprocessing of one image: the exact steps of docs/data_format.md.

`preprocess` is the contract's preprocessing (pretrain's caption CLI implements the same steps;
a test compares them pixel for pixel). `open_image` decodes a file or bytes and turns every
failure into a `BadImage` whose reason is a manifest skip reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

PREPROCESSING = {
    "mode": "RGB",
    "resize": "shorter side to image_size, bicubic",
    "crop": "center",
}
"""The manifest's image_text.preprocessing block (what `preprocess` does)."""
ENCODING = "png"
"""How images are stored in the shards (lossless, so the trainer sees the preprocessed pixels)."""


class BadImage(Exception):
    """An image that cannot be used; `reason` is its skip reason (see data_preparation.md)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def preprocess(img: Image.Image, size: int) -> Image.Image:
    """RGB, the shorter side resized to `size` (bicubic), then the center `size` x `size` crop.

    The other side becomes `round(side * size / short)` (at least `size`); the crop box starts
    at left = (w - size) // 2, top = (h - size) // 2.
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


def open_image(path: Path | None = None, data: bytes | None = None) -> Image.Image:
    """The decoded image of a file or of bytes (fully loaded); BadImage with the skip reason.

    Reasons: missing_image (no such file), empty_image (0 bytes), not_an_image (PIL cannot
    identify it, or it is larger than PIL's decompression-bomb limit), truncated_image (the
    header is fine but the pixel data is cut or damaged).
    """
    if data is None:
        if path is None or not path.is_file():
            raise BadImage("missing_image", f"no such file {path}")
        data = path.read_bytes()
    if not data:
        raise BadImage("empty_image", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage("not_an_image", "not a readable image file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadImage("not_an_image", str(e)) from None
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:  # "image file is truncated", bad zlib data
        raise BadImage("truncated_image", str(e)) from None
    return img


def png_bytes(img: Image.Image) -> bytes:
    """The PNG file of an RGB image (deterministic: no metadata, fixed compression level)."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
