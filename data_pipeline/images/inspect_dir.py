"""`python -m data_pipeline.inspect DIR` for an image-text directory (manifest kind image_text):
re-hash the tokenizer, shards and offset indexes, re-count the samples, and show a few captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.manifest import sha256_file


def is_image_text(manifest: dict[str, Any]) -> bool:
    """Whether `manifest` describes an image-text directory."""
    return manifest.get("kind") == "image_text"


def verify_image_dir(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems found re-hashing the tokenizer, each tar and .idx.npy and re-counting (empty=ok)."""
    problems = []
    tok = manifest["tokenizer"]
    if sha256_file(out_dir / tok["path"]) != tok["sha256"]:
        problems.append(f"{tok['path']}: sha256 differs from the manifest")
    total = 0
    for shard in manifest["image_text"]["shards"]:
        for key, digest in (("tar", "sha256"), ("index", "index_sha256")):
            file = out_dir / shard[key]
            if not file.is_file():
                problems.append(f"{shard[key]}: missing")
            elif sha256_file(file) != shard[digest]:
                problems.append(f"{shard[key]}: sha256 differs from the manifest")
        if any(p.startswith((shard["tar"], shard["index"])) for p in problems):
            continue
        rows = len(np.load(out_dir / shard["index"]))
        total += rows
        if rows != shard["num_samples"]:
            problems.append(
                f"{shard['index']}: {rows} samples, manifest says {shard['num_samples']}"
            )
    if not problems and total != manifest["image_text"]["num_samples"]:
        problems.append(
            f"shards hold {total} samples, manifest says {manifest['image_text']['num_samples']}"
        )
    return problems


def image_statistics(manifest: dict[str, Any]) -> dict[str, Any]:
    """The figures `inspect` prints for an image-text directory."""
    block = manifest["image_text"]
    return {
        "kind": "image_text",
        "source": block["source"],
        "shards": len(block["shards"]),
        "samples": block["num_samples"],
        "image_size": block["image_size"],
        "caption_tokens": block["num_caption_tokens"],
        "max_caption_tokens": block["max_caption_tokens"],
        "mean_caption_tokens": round(block["num_caption_tokens"] / max(block["num_samples"], 1), 2),
        "image_token": f"{block['image_token']} (id {block['image_token_id']})",
        "skipped": dict(block["skipped"]),
        "vocab_size": manifest["tokenizer"]["vocab_size"],
    }


def captions(out_dir: Path, manifest: dict[str, Any], count: int, chars: int) -> list[str]:
    """`count` captions spread evenly over the shards, read through the offset indexes."""
    shards = manifest["image_text"]["shards"]
    spots = [(s, i) for s in shards for i in range(s["num_samples"])]
    if count <= 0 or not spots:
        return []
    picks = sorted({int(round(x)) for x in np.linspace(0, len(spots) - 1, count)})
    texts = []
    for pick in picks:
        shard, row = spots[pick]
        png_at, png_size = (int(v) for v in np.load(out_dir / shard["index"])[row][:2])
        with open(out_dir / shard["tar"], "rb") as tar:
            # the caption member (K.txt) follows K.png: its data starts at the next 512-byte block
            # after the png data plus one 512-byte tar header
            start = png_at + -(-png_size // 512) * 512 + 512
            tar.seek(start - 512)
            header = tar.read(512)
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            text = tar.read(size).decode("utf-8")
        texts.append(f"--- sample {pick} ({shard['tar']}) ---\n{text[:chars]}")
    return texts
