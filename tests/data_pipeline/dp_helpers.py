"""Helpers for the data pipeline tests (imported as `dp_helpers`; conftest holds the fixtures)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_MODULES = ["json", "email", "http", "urllib", "logging", "xml/dom", "concurrent/futures"]
PROSE = [
    "The quick brown fox jumps over the lazy dog. Numbers like 3.14159 and 2026 are split.",
    "Ünïcödé text, 日本語のテキスト, emoji 🎉, tabs\tand  double  spaces stay as they are.",
    "A paragraph with a trailing newline.\n",
]


def corpus_texts(limit_bytes: int = 300_000) -> list[str]:
    """Deterministic real documents: stdlib modules (code) plus a few prose lines."""
    texts, size = list(PROSE), 0
    for module in CORPUS_MODULES:
        for path in sorted((STDLIB / module).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.strip() and size < limit_bytes:
                texts.append(text)
                size += len(text.encode())
    return texts


def write_jsonl(path: Path, texts: list[str]) -> Path:
    """One {"text": ...} object per line."""
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def pretrained_cli_args(corpus: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """`python -m data_pipeline` arguments: `corpus` with a given tokenizer into `out`, quiet."""
    return [
        "data_pipeline",
        f"input.paths=[{corpus}]",
        "tokenizer=pretrained",
        f"tokenizer.model={model}",
        f"output.dir={out}",
        "progress=false",
        *extra,
    ]


def make_cfg(paths: list, out: Path, model: Path | None = None, **kw) -> PrepareConfig:
    """A PrepareConfig for the tests; keyword args set top-level fields or `section__key`."""
    cfg = PrepareConfig(
        input=InputConfig(name="test", paths=[str(p) for p in paths]),
        tokenizer=TokenizerConfig(model=str(model) if model else None, vocab_size=512),
        output=OutputConfig(dir=str(out)),
        progress=False,
    )
    for key, value in kw.items():
        if "__" in key:
            section, name = key.split("__")
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, key, value)
    return cfg


def shard_bytes(out: Path) -> dict[str, bytes]:
    """name -> content of every shard .bin/.idx in an output dir."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard_*.[bi][id][nx]"))}


def read_docs(out: Path) -> list[list[int]]:
    """All documents of an output dir, in shard order, via megatron's IndexedDataset."""
    from data_pipeline.megatron_io import indexed_dataset

    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for shard in manifest["shards"]:
        dataset = indexed_dataset().IndexedDataset(str(out / shard["prefix"]), mmap=True)
        docs.extend(dataset[i].tolist() for i in range(len(dataset)))
        del dataset
    return docs


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    """Run `python -m <args>` from the repo root; returns the CompletedProcess."""
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _mount(*args: str) -> None:
    """`mount ARGS`; pytest.skip (with mount's reason) where this user may not mount."""
    import pytest

    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real small file system (tmpfs of `size`, e.g. "1m") mounted at `path`; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only_view(source: Path, path: Path) -> Iterator[Path]:
    """`source` seen read-only at `path` (a read-only bind mount; root ignores mode bits)."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
