"""Helpers of the image-text tests: tiny inputs made with Pillow, and shard readers (tarfile and
the .idx.npy offsets) that check the contract's layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.config import (
    ImageConfig,
    InputConfig,
    OutputConfig,
    PrepareConfig,
    TokenizerConfig,
)

CAPTION_WORDS = ["red", "green", "blue", "square", "circle", "left", "right", "small", "big"]
SIZES = [(40, 24), (24, 40), (32, 32), (50, 20), (17, 33), (64, 64)]


def caption(i: int) -> str:
    """A deterministic caption of a few words."""
    words = [CAPTION_WORDS[(i * 7 + k * 3) % len(CAPTION_WORDS)] for k in range(3 + i % 4)]
    return f"picture {i}: " + " ".join(words)


def make_image(i: int) -> Image.Image:
    """A small RGB image with a few coloured bands (different size per i)."""
    w, h = SIZES[i % len(SIZES)]
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pixels[:, : w // 2] = (i * 40 % 256, 100, 200)
    return Image.fromarray(pixels, "RGB")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def write_folder(folder: Path, n: int, suffix: str = ".png") -> list[tuple[Path, str]]:
    """n images `img_NNN<suffix>` with same-stem .txt captions; (path, caption) in order."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        path = folder / f"img_{i:03d}{suffix}"
        make_image(i).save(path)
        (folder / f"img_{i:03d}.txt").write_text(caption(i) + "\n")
        pairs.append((path, caption(i)))
    return pairs


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """{"image": relative path, "text": caption} per line."""
    path.write_text("".join(json.dumps({"image": p, "text": c}) + "\n" for p, c in pairs))
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar holding `members` (name, data) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def image_cfg(
    paths: list, fmt: str, out: Path, model: Path | None = None, size: int = 16, **input_kw: Any
) -> PrepareConfig:
    """A PrepareConfig of an image format (vocab 300: tiny caption sets; images size x size)."""
    return PrepareConfig(
        input=InputConfig(name="test", paths=[str(p) for p in paths], format=fmt, **input_kw),
        tokenizer=TokenizerConfig(model=str(model) if model else None, vocab_size=300),
        output=OutputConfig(dir=str(out)),
        images=ImageConfig(size=size),
        progress=False,
    )


def read_dir(out: Path) -> list[dict[str, Any]]:
    """Every sample of an image-text dir, read with tarfile AND via the idx offsets; asserts
    that both agree and that the webdataset layout holds (keys, member order)."""
    manifest = json.loads((out / "manifest.json").read_text())
    samples: list[dict[str, Any]] = []
    for shard in manifest["image_text"]["shards"]:
        tar_path = out / shard["tar"]
        index = np.load(out / shard["index"])
        assert index.dtype == np.int64 and index.shape == (shard["num_samples"], 4)
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            data = {m.name: tar.extractfile(m).read() for m in members}
        raw = tar_path.read_bytes()
        assert len(names) == 3 * shard["num_samples"]
        for row, (png_off, png_size, ids_off, ids_size) in enumerate(index):
            key = f"{len(samples):09d}"
            assert names[3 * row : 3 * row + 3] == [f"{key}.png", f"{key}.txt", f"{key}.ids"]
            assert raw[png_off : png_off + png_size] == data[f"{key}.png"]
            assert raw[ids_off : ids_off + ids_size] == data[f"{key}.ids"]
            samples.append(
                {
                    "key": key,
                    "image": Image.open(io.BytesIO(data[f"{key}.png"])),
                    "caption": data[f"{key}.txt"].decode("utf-8"),
                    "ids": np.frombuffer(data[f"{key}.ids"], dtype="<i4").tolist(),
                }
            )
    assert len(samples) == manifest["image_text"]["num_samples"]
    return samples


def synthetic_cfg(out: Path, count: int, subset: str = "train") -> PrepareConfig:
    """A PrepareConfig of `count` synthetic 32x32 images (a 320-piece tokenizer)."""
    cfg = image_cfg([], "synthetic_images", out, size=32, subset=subset, synthetic_count=count)
    cfg.tokenizer.vocab_size = 320
    return cfg
