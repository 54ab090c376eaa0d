"""`python -m data_pipeline.merge --out OUT [--num-shards K] DIR [DIR ...]`.

Concatenates the shards of one or several output dirs (same tokenizer required), in the order
given, into K shards balanced by tokens, and writes OUT/manifest.json (last, atomically).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import OutputError
from data_pipeline.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    load_manifest,
    verify_dir,
    write_manifest,
)
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.tokenizer import sha256_file, tmp_suffix

log = logging.getLogger("data_pipeline.merge")


def _load_inputs(dirs: list[Path], verify: bool) -> list[dict[str, Any]]:
    manifests = []
    for d in dirs:
        manifest = load_manifest(d)
        problems = verify_dir(d, manifest) if verify else []
        if problems:
            raise OutputError(f"{d} does not verify: {problems[0]} (see data_pipeline.inspect)")
        manifests.append(manifest)
    instruct = [str(d) for d, m in zip(dirs, manifests, strict=True) if "instruct" in m]
    if instruct:
        raise OutputError(
            f"{instruct[0]} holds instruction data (manifest `instruct`, with loss masks), which "
            "merge does not combine yet. Prepare the inputs together in one job instead "
            "(input.paths=[a.jsonl, b.jsonl]), or train on both dirs (data.paths=[...])."
        )
    shas = {m["tokenizer"]["sha256"] for m in manifests}
    if len(shas) > 1:
        raise OutputError(
            "the inputs were made with different tokenizers (sha256 "
            + ", ".join(sorted(s[:12] for s in shas))
            + "); only dirs with the same tokenizer.model can be merged"
        )
    return manifests


def _groups(shards: list[tuple[Path, dict]], num_shards: int) -> list[list[tuple[Path, dict]]]:
    """Contiguous groups balanced by tokens: shard i goes to the group of its first token."""
    total = sum(s["num_tokens"] for _, s in shards)
    groups: list[list[tuple[Path, dict]]] = [[] for _ in range(num_shards)]
    before = 0
    for item in shards:
        groups[min(before * num_shards // max(total, 1), num_shards - 1)].append(item)
        before += item[1]["num_tokens"]
    return [g for g in groups if g]


def _merge_skipped(manifests: list[dict], max_examples: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for m in manifests:
        for reason, n in m["skipped"]["counts"].items():
            counts[reason] = counts.get(reason, 0) + n
        for reason, labels in m["skipped"]["examples"].items():
            kept = examples.setdefault(reason, [])
            kept.extend(labels[: max(max_examples - len(kept), 0)])
    return {"counts": counts, "examples": examples}


def _write_group(out: Path, index: int, group: list[tuple[Path, dict]], dtype: str) -> dict:
    module = indexed_dataset()
    prefix = f"shard_{index:05d}"
    tmp = out / f".{prefix}.{tmp_suffix()}"
    builder = module.IndexedDatasetBuilder(f"{tmp}.bin", dtype=np.dtype(dtype).type)
    for src_dir, shard in group:
        builder.add_index(str(src_dir / shard["prefix"]))
    builder.finalize(f"{tmp}.idx")
    os.replace(f"{tmp}.bin", out / f"{prefix}.bin")
    os.replace(f"{tmp}.idx", out / f"{prefix}.idx")
    return {
        "prefix": prefix,
        "num_docs": sum(s["num_docs"] for _, s in group),
        "num_tokens": sum(s["num_tokens"] for _, s in group),
        "bin_sha256": sha256_file(out / f"{prefix}.bin"),
        "idx_sha256": sha256_file(out / f"{prefix}.idx"),
        "num_bytes": sum(s.get("num_bytes", 0) for _, s in group),
        "merged_from": [f"{src_dir}/{s['prefix']}" for src_dir, s in group],
    }


def merge(dirs: list[Path], out: Path, num_shards: int = 1, verify: bool = True) -> Path:
    """Merge the output dirs `dirs` into `out`; return `out`."""
    started = time.perf_counter()
    dirs = [d.resolve() for d in dirs]
    out = out.resolve()
    if out in dirs:
        raise OutputError(f"--out {out} is one of the inputs; merge into a new directory")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a directory; give a new directory path")
    if len(set(dirs)) < len(dirs):
        log.warning("a directory is given twice: its documents will appear twice in %s", out)
    if num_shards < 1:
        raise OutputError(f"--num-shards={num_shards} must be >= 1")
    manifests = _load_inputs(dirs, verify)
    if out.exists() and any(out.glob("shard_*")):
        raise OutputError(f"--out {out} already holds shards; choose an empty directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out} cannot be created ({e.strerror or e})") from e
    (out / MANIFEST).unlink(missing_ok=True)
    first = manifests[0]
    shutil.copyfile(dirs[0] / first["tokenizer"]["path"], out / "tokenizer.model")
    shards = [(d, s) for d, m in zip(dirs, manifests, strict=True) for s in m["shards"]]
    records = [
        _write_group(out, i, g, first["dtype"]) for i, g in enumerate(_groups(shards, num_shards))
    ]
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {**first["tokenizer"], "path": "tokenizer.model"},
        "dtype": first["dtype"],
        "shards": records,
        "totals": {
            "num_docs": sum(r["num_docs"] for r in records),
            "num_tokens": sum(r["num_tokens"] for r in records),
            "num_bytes": sum(r["num_bytes"] for r in records),
        },
        "inputs": [i for m in manifests for i in m["inputs"]],
        "skipped": _merge_skipped(manifests, 5),
        "config": {
            "merge": {"dirs": [str(d) for d in dirs], "num_shards": num_shards},
            "sources": [m["config"] for m in manifests],
        },
        "timings": {"total_s": round(time.perf_counter() - started, 3)},
        "encoder": {"name": "merged", "per_source": [m.get("encoder") for m in manifests]},
    }
    write_manifest(out, manifest)
    log.info(
        "merged %d shards of %d dirs into %d shards in %s (%d docs, %d tokens)",
        len(shards),
        len(dirs),
        len(records),
        out,
        manifest["totals"]["num_docs"],
        manifest["totals"]["num_tokens"],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.merge", description=__doc__)
    parser.add_argument("dirs", type=Path, nargs="+", help="output dirs to merge, in order")
    parser.add_argument("--out", type=Path, required=True, help="new output dir")
    parser.add_argument("--num-shards", type=int, default=1, help="shards to write (default 1)")
    parser.add_argument("--no-verify", action="store_true", help="skip re-hashing the inputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s: %(message)s")
    try:
        merge(args.dirs, args.out, args.num_shards, verify=not args.no_verify)
    except OutputError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
