"""manifest.json: written last (temporary name, then rename); see docs/data_format.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_pipeline.errors import OutputError
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.tokenizer import sha256_file, write_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def merge_skipped(records: list[dict], max_examples: int) -> dict[str, Any]:
    """Sum skip counts over shards (in shard order) and keep the first examples of each reason."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for record in records:
        for reason, n in record["skipped"]["counts"].items():
            counts[reason] = counts.get(reason, 0) + n
        for reason, labels in record["skipped"]["examples"].items():
            kept = examples.setdefault(reason, [])
            kept.extend(labels[: max(max_examples - len(kept), 0)])
    return {"counts": counts, "examples": examples}


def shard_entry(record: dict) -> dict[str, Any]:
    """The manifest's per-shard entry (contract fields first, then extras)."""
    keys = (
        "prefix",
        "num_docs",
        "num_tokens",
        "bin_sha256",
        "idx_sha256",
        "num_bytes",
        "input_bytes",
        "encoder",
        "num_target_tokens",
        "loss_mask",
    )
    return {k: record[k] for k in keys if k in record}


def build_manifest(
    records: list[dict],
    tokenizer: dict[str, Any],
    dtype: str,
    inputs: list[dict[str, Any]],
    config: dict[str, Any],
    timings: dict[str, float],
    max_examples: int,
    encoder: dict[str, Any],
) -> dict[str, Any]:
    """The manifest dict for the shard records (empty shards are left out)."""
    shards = [shard_entry(r) for r in records if r["num_docs"] > 0]
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "dtype": dtype,
        "shards": shards,
        "totals": {
            "num_docs": sum(s["num_docs"] for s in shards),
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_bytes": sum(s.get("num_bytes", 0) for s in shards),
        },
        "inputs": inputs,
        "skipped": merge_skipped(records, max_examples),
        "config": config,
        "timings": timings,
        "encoder": encoder,
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Atomically write OUTPUT_DIR/manifest.json."""
    path = out_dir / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """Read OUTPUT_DIR/manifest.json, or OutputError saying how to produce it."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise OutputError(
            f"{path} not found: {out_dir} is not a finished data_pipeline output "
            "(run `python -m data_pipeline output.dir=...`, or stage=finalize)"
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise OutputError(f"{path} is not valid JSON ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OutputError(
            f"{path}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}"
        )
    return manifest


def verify_dir(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Problems found re-hashing the tokenizer and shards and re-counting docs/tokens (empty=ok)."""
    IndexedDataset = indexed_dataset().IndexedDataset  # noqa: N806
    problems = []
    tok = manifest["tokenizer"]
    if sha256_file(out_dir / tok["path"]) != tok["sha256"]:
        problems.append(f"{tok['path']}: sha256 differs from the manifest")
    for shard in manifest["shards"]:
        prefix = out_dir / shard["prefix"]
        files = [(shard["prefix"], shard)]
        if "instruct" in manifest:
            files.append(
                (shard.get("loss_mask", {}).get("prefix", "?"), shard.get("loss_mask", {}))
            )
        for name, entry in files:
            for suffix in ("bin", "idx"):
                file = out_dir / f"{name}.{suffix}"
                if not file.is_file():
                    problems.append(f"{file.name}: missing")
                elif sha256_file(file) != entry.get(f"{suffix}_sha256"):
                    problems.append(f"{file.name}: sha256 differs from the manifest")
        if any(p.startswith(shard["prefix"]) for p in problems):
            continue
        ds = IndexedDataset(str(prefix), mmap=True)
        if len(ds) != shard["num_docs"] or int(ds.sequence_lengths.sum()) != shard["num_tokens"]:
            problems.append(
                f"{shard['prefix']}: {len(ds)} docs / {int(ds.sequence_lengths.sum())}"
                f" tokens, manifest says {shard['num_docs']} / {shard['num_tokens']}"
            )
        elif "instruct" in manifest:
            problems += _verify_mask(out_dir, shard, ds.sequence_lengths)
    return problems


def _verify_mask(out_dir: Path, shard: dict[str, Any], lengths: Any) -> list[str]:
    """Problems of a shard's loss mask: other lengths than the tokens, or another target count."""
    import numpy as np

    masks = indexed_dataset().IndexedDataset(str(out_dir / shard["loss_mask"]["prefix"]), mmap=True)
    name = shard["loss_mask"]["prefix"]
    if masks.index.dtype != np.uint8 or not np.array_equal(masks.sequence_lengths, lengths):
        return [f"{name}: documents/lengths/dtype do not match {shard['prefix']}"]
    targets = int(np.asarray(masks.bin_reader.read(np.uint8, int(lengths.sum()), 0)).sum())
    if targets != shard.get("num_target_tokens"):
        return [f"{name}: {targets} target tokens, manifest says {shard.get('num_target_tokens')}"]
    return []
