"""Instruction data dirs for tests, written exactly as the data pipeline's contract says.

docs/data_format.md (instruction data): token shards whose documents are one example each
(tokens, then EOD), an aligned uint8 loss-mask indexed dataset `shard_NNNNN.loss_mask` per
shard (megatron `IndexedDatasetBuilder`), and a manifest.json with the `instruct` block and
per-shard `num_target_tokens` / `loss_mask` entries. The tokenizer.model is a copy of a real
SentencePiece model (the `prepared_data` fixture's), and the examples are real encoded text.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np

Example = tuple[list[int], list[int]]
"""(tokens incl. the final EOD, loss mask: 1 at every target token)."""

WORDS = ("alpha", "beta", "gamma", "delta", "value", "items", "count", "total", "name", "key")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_manifest(tokenizer_dir: Path) -> dict:
    """The manifest.json of the directory whose tokenizer the test data reuses."""
    return json.loads((Path(tokenizer_dir) / "manifest.json").read_text())


def prompt_completion_examples(
    tokenizer_dir: Path, count: int, seed: int = 0, max_words: int = 6
) -> list[Example]:
    """`count` prompt/completion examples of varied length, encoded with the real tokenizer."""
    import sentencepiece as spm

    manifest = source_manifest(tokenizer_dir)
    processor = spm.SentencePieceProcessor(
        model_file=str(Path(tokenizer_dir) / manifest["tokenizer"]["path"])
    )
    eod = int(manifest["tokenizer"]["eod_id"])
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        name = "_".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        args = ", ".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_words // 3)))
        body = " + ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
        prompt = processor.encode(f"def {name}({args}):\n")
        completion = processor.encode(f"    return {body}\n") + [eod]
        examples.append((prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    return examples


def _write_indexed(prefix: Path, documents: list[list[int]], dtype) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for document in documents:
        builder.add_document(np.asarray(document, dtype=dtype), [len(document)])
    builder.finalize(f"{prefix}.idx")


def write_instruct_dir(
    out_dir: Path,
    tokenizer_dir: Path,
    shards: list[list[Example]],
    *,
    fmt: str = "prompt_completion",
    max_tokens: int = 2048,
    instruct: bool = True,
) -> Path:
    """Write an instruction data dir (tmp name, then rename) with one shard per list."""
    from megatron.core.datasets.indexed_dataset import DType

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = source_manifest(tokenizer_dir)
    tokenizer = dict(source["tokenizer"])
    shutil.copyfile(Path(tokenizer_dir) / tokenizer["path"], tmp / "tokenizer.model")
    tokenizer["path"] = "tokenizer.model"
    dtype = DType.optimal_dtype(int(tokenizer["vocab_size"]))
    entries = []
    for index, examples in enumerate(shards):
        prefix = f"shard_{index:05d}"
        _write_indexed(tmp / prefix, [t for t, _ in examples], dtype)
        entry = {
            "prefix": prefix,
            "num_docs": len(examples),
            "num_tokens": sum(len(t) for t, _ in examples),
            "bin_sha256": _sha256(tmp / f"{prefix}.bin"),
            "idx_sha256": _sha256(tmp / f"{prefix}.idx"),
        }
        if instruct:
            mask_prefix = f"{prefix}.loss_mask"
            _write_indexed(tmp / mask_prefix, [m for _, m in examples], np.uint8)
            entry["num_target_tokens"] = sum(sum(m) for _, m in examples)
            entry["loss_mask"] = {
                "prefix": mask_prefix,
                "bin_sha256": _sha256(tmp / f"{mask_prefix}.bin"),
                "idx_sha256": _sha256(tmp / f"{mask_prefix}.idx"),
            }
        entries.append(entry)
    manifest = {
        "format_version": 1,
        "tokenizer": tokenizer,
        "dtype": np.dtype(dtype).name,
        "shards": entries,
        "totals": {
            "num_docs": sum(e["num_docs"] for e in entries),
            "num_tokens": sum(e["num_tokens"] for e in entries),
        },
    }
    if instruct:
        template = "{prompt}{completion}"
        manifest["instruct"] = {
            "format": fmt,
            "template": {
                "name": "plain",
                "sha256": hashlib.sha256(template.encode()).hexdigest(),
                "text": template,
            },
            "special_tokens": [],
            "max_tokens": max_tokens,
            "overlong": "truncate",
            "truncated": 0,
            "dropped": 0,
            "num_target_tokens": sum(e["num_target_tokens"] for e in entries),
        }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def build_instruct_dir(
    out_dir: Path, tokenizer_dir: Path, counts: tuple[int, ...] = (40, 30), seed: int = 0
) -> Path:
    """A ready instruction dir: shards of `counts` random prompt/completion examples."""
    examples = prompt_completion_examples(tokenizer_dir, sum(counts), seed)
    shards, start = [], 0
    for count in counts:
        shards.append(examples[start : start + count])
        start += count
    return write_instruct_dir(out_dir, tokenizer_dir, shards)
