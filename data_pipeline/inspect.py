"""`python -m data_pipeline.inspect DIR`: verify an output dir and print statistics and samples.

Exit status 0 when every checksum and count matches manifest.json, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import OutputError
from data_pipeline.images import inspect_dir
from data_pipeline.manifest import load_manifest, verify_dir
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.tokenizer import load_processor

log = logging.getLogger("data_pipeline.inspect")


def shard_lengths(out_dir: Path, manifest: dict[str, Any]) -> np.ndarray:
    """Token counts of every document (EOD included), all shards in order."""
    dataset_cls = indexed_dataset().IndexedDataset
    parts = []
    for shard in manifest["shards"]:
        try:
            dataset = dataset_cls(str(out_dir / shard["prefix"]), mmap=True)
        except Exception as e:  # megatron raises assorted errors on a damaged .idx
            raise OutputError(f"{shard['prefix']}: cannot be read ({type(e).__name__}: {e})") from e
        # copy while `dataset` is alive: its __del__ unmaps the memory the view points into
        parts.append(np.array(dataset.sequence_lengths, dtype=np.int64))
        del dataset
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def statistics(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Corpus statistics from the index files and the manifest."""
    lengths = shard_lengths(out_dir, manifest)
    totals = manifest["totals"]
    return {
        "shards": len(manifest["shards"]),
        "documents": int(lengths.size),
        "tokens": int(lengths.sum()),
        "tokens_per_doc": {
            "min": int(lengths.min()) if lengths.size else 0,
            "median": float(np.median(lengths)) if lengths.size else 0.0,
            "mean": round(float(lengths.mean()), 1) if lengths.size else 0.0,
            "max": int(lengths.max()) if lengths.size else 0,
        },
        "text_bytes": totals.get("num_bytes", 0),
        "bytes_per_token": round(totals.get("num_bytes", 0) / max(int(lengths.sum()), 1), 3),
        "dtype": manifest["dtype"],
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "encoder": manifest.get("encoder", {}).get("name"),
        "skipped": manifest["skipped"]["counts"],
        **_instruct_statistics(manifest, int(lengths.sum())),
    }


def _instruct_statistics(manifest: dict[str, Any], tokens: int) -> dict[str, Any]:
    """Loss-mask statistics of instruction data ({} for pretraining data)."""
    block = manifest.get("instruct")
    if block is None:
        return {}
    targets = sum(s.get("num_target_tokens", 0) for s in manifest["shards"])
    return {
        "instruct": f"{block['format']}, template {block['template']['name']} "
        f"(sha256 {block['template']['sha256'][:12]})",
        "loss_masks": [s["loss_mask"]["prefix"] for s in manifest["shards"]],
        "target_tokens": targets,
        "target_fraction": round(targets / max(tokens, 1), 4),
        "overlong": f"{block['overlong']} at {block['max_tokens']} tokens: "
        f"{block['truncated']} truncated, {block['dropped']} dropped",
    }


def samples(out_dir: Path, manifest: dict[str, Any], count: int, chars: int) -> list[str]:
    """Decode `count` documents spread evenly over the shards (first `chars` characters each)."""
    sp = load_processor(out_dir / manifest["tokenizer"]["path"])
    eod = manifest["tokenizer"]["eod_id"]
    dataset_cls = indexed_dataset().IndexedDataset
    docs = [(s["prefix"], i) for s in manifest["shards"] for i in range(s["num_docs"])]
    picks = [docs[k * len(docs) // count] for k in range(count)] if docs and count else []
    shown = []
    for prefix, index in picks:
        dataset = dataset_cls(str(out_dir / prefix), mmap=True)
        ids = dataset[index].tolist()  # copy before `dataset` (and its mmap) goes away
        del dataset
        ends_with_eod = bool(ids) and ids[-1] == eod
        text = sp.decode(ids[:-1] if ends_with_eod else ids)
        head = text[:chars] + (" [...]" if len(text) > chars else "")
        shown.append(f"--- {prefix}[{index}] {len(ids)} tokens, EOD={ends_with_eod}\n{head}")
    return shown


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.inspect", description=__doc__)
    parser.add_argument("dir", type=Path, help="output dir of `python -m data_pipeline`")
    parser.add_argument("--samples", type=int, default=3, help="documents to decode (default 3)")
    parser.add_argument("--chars", type=int, default=300, help="characters shown per sample")
    parser.add_argument("--no-verify", action="store_true", help="skip re-hashing the files")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s: %(message)s")
    out_dir = args.dir.resolve()
    try:
        manifest = load_manifest(out_dir)
        images = inspect_dir.is_image_text(manifest)
        verify = inspect_dir.verify_image_dir if images else verify_dir
        problems = [] if args.no_verify else verify(out_dir, manifest)
    except OutputError as e:
        log.error("%s", e)
        return 1
    try:
        figures = inspect_dir.image_statistics if images else partial(statistics, out_dir)
        stats = figures(manifest) if not problems else {}
    except Exception as e:  # damaged files read with --no-verify: name them, no traceback
        log.error("cannot read %s: %s; run without --no-verify to check it", out_dir, str(e))
        return 1
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, **stats}))
        return 1 if problems else 0
    for problem in problems:
        log.error("verify: %s", problem)
    if problems:
        return 1
    verified = "skipped (--no-verify)" if args.no_verify else "ok (checksums and counts)"
    print(f"{out_dir}\nverify: {verified}")
    for key, value in stats.items():
        print(f"{key:>15}: {value}")
    show = inspect_dir.captions if images else samples
    for text in show(out_dir, manifest, args.samples, args.chars):
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
