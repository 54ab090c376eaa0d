"""Build the small data directory used by training and checkpoint tests."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

MAX_BYTES = 1_500_000


def _stdlib_documents(max_bytes: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            continue
        docs.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    return docs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_small_dataset(out_dir: Path, vocab_size: int = 512, num_shards: int = 2) -> Path:
    """Train a BPE tokenizer and write `num_shards` Megatron shards plus manifest.json."""
    import numpy as np
    import sentencepiece as spm
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    out_dir.mkdir(parents=True, exist_ok=True)
    docs = _stdlib_documents(MAX_BYTES)
    model_prefix = out_dir / "tokenizer"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs[:40]),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        max_sentence_length=1 << 20,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(model_prefix) + ".model")
    dtype = DType.optimal_dtype(sp.get_piece_size())
    shards = []
    for index in range(num_shards):
        prefix = f"shard_{index:05d}"
        builder = IndexedDatasetBuilder(str(out_dir / f"{prefix}.bin"), dtype=dtype)
        num_docs = num_tokens = 0
        for ids in sp.encode(docs[index::num_shards]):
            ids = ids + [sp.eos_id()]
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)])
            num_docs += 1
            num_tokens += len(ids)
        builder.finalize(str(out_dir / f"{prefix}.idx"))
        shards.append(
            {
                "prefix": prefix,
                "num_docs": num_docs,
                "num_tokens": num_tokens,
                "bin_sha256": _sha256(out_dir / f"{prefix}.bin"),
                "idx_sha256": _sha256(out_dir / f"{prefix}.idx"),
            }
        )
    manifest = {
        "format_version": 1,
        "tokenizer": {
            "path": "tokenizer.model",
            "sha256": _sha256(out_dir / "tokenizer.model"),
            "vocab_size": sp.get_piece_size(),
            "eod_id": sp.eos_id(),
            "bos_id": sp.bos_id(),
            "pad_id": sp.pad_id(),
            "unk_id": sp.unk_id(),
            "type": "bpe",
        },
        "dtype": np.dtype(dtype).name,
        "shards": shards,
        "totals": {
            "num_docs": sum(s["num_docs"] for s in shards),
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_bytes": sum(len(d.encode()) for d in docs),
        },
        "inputs": [],
        "skipped": {"counts": {}, "examples": {}},
        "config": {"builder": "tests/_prepared.py"},
        "timings": {},
    }
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out_dir / "manifest.json")
    return out_dir
