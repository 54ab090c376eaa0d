"""Megatron-LM's tools/preprocess_data.py for bench/dataprep.py: its command, and the byte
comparison of its .bin/.idx output with ours.

    .venv/bin/python bench/dataprep_megatron.py DIR/tools/preprocess_data.py [its options]

runs that script unmodified (runpy, as its own `__main__`) with the installed megatron-core.
Where triton is missing (CPU torch), megatron.training's import of the triton-only
batch-invariant kernels module gets a stub that raises if called: preprocessing never calls it.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
import types
from pathlib import Path
from typing import Any

KERNELS = "megatron.core.transformer.custom_layers.batch_invariant_kernels"
"""Imported by megatron.training (which preprocess_data.py imports); needs triton at import."""
OUTPUT_SUFFIX = "_text_document"
"""What preprocess_data.py appends to --output-prefix (json key `text`, document level)."""


def _stub_kernels() -> None:
    """Register a stand-in for KERNELS whose functions raise (see the module doc)."""
    stub = types.ModuleType(KERNELS)

    def unavailable(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f"{KERNELS} needs triton, which is not installed (benchmark stub)")

    for name in ("set_batch_invariant_mode", "is_batch_invariant_mode_enabled"):
        setattr(stub, name, unavailable)
    for name in ("enable_batch_invariant_mode", "disable_batch_invariant_mode"):
        setattr(stub, name, unavailable)
    sys.modules[KERNELS] = stub


def run_preprocess_data(argv: list[str]) -> None:
    """Run preprocess_data.py (argv[0]) with its options (argv[1:]) in this process."""
    if importlib.util.find_spec("triton") is None:
        _stub_kernels()
    sys.argv = list(argv)
    sys.path[0] = str(Path(argv[0]).resolve().parent)  # as `python tools/preprocess_data.py`
    runpy.run_path(argv[0], run_name="__main__")


def command(checkout: str, jsonl: str, model: str, prefix: str, workers: int) -> list[str]:
    """This module's command line running `checkout`'s preprocess_data.py on `jsonl`."""
    script = str(Path(checkout) / "tools" / "preprocess_data.py")
    return [
        sys.executable,
        __file__,
        script,
        *("--input", jsonl, "--output-prefix", prefix),
        *("--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model),
        *("--append-eod", "--workers", str(workers)),
    ]


def error_line(log: str, returncode: int) -> str:
    """The last line of a failed run's output, with a hint when it names a missing module of
    megatron (the checkout expects another megatron-core than the installed one)."""
    from importlib.metadata import version

    lines = [line for line in log.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit {returncode}"
    if "No module named 'megatron." not in last:
        return last
    installed = version("megatron-core")
    return (
        f"{last} (the checkout needs a megatron-core other than the installed {installed}: "
        f"use the matching tag, e.g. `git worktree add DIR core_v{installed}`)"
    )


def idx_doc_lengths(path: str) -> list[int]:
    """Token lengths of the documents of a Megatron MMIDIDX .idx (one sequence per document)."""
    import numpy as np

    raw = Path(path).read_bytes()
    count = int(np.frombuffer(raw, np.uint64, 1, 18)[0])  # after magic(9) version(8) dtype(1)
    return np.frombuffer(raw, np.int32, count, 34).tolist()


def compare(our_prefixes: list[str], their_prefix: str) -> tuple[bool, str]:
    """Whether Megatron's .bin/.idx equal ours (shards in order) byte for byte, and in words
    what differs."""
    ours_bin = b"".join(Path(f"{p}.bin").read_bytes() for p in our_prefixes)
    their_bin = Path(f"{their_prefix}.bin").read_bytes()
    ours_docs = [n for p in our_prefixes for n in idx_doc_lengths(f"{p}.idx")]
    their_docs = idx_doc_lengths(f"{their_prefix}.idx")
    same_idx = len(our_prefixes) == 1 and (
        Path(f"{our_prefixes[0]}.idx").read_bytes() == Path(f"{their_prefix}.idx").read_bytes()
    )
    if ours_bin == their_bin and same_idx:
        return True, f"identical .bin and .idx, {len(their_docs):,} docs"
    if len(ours_docs) != len(their_docs):
        why = "we skip empty/bad records; Megatron keeps every line with >= 1 token"
        return False, f"{len(ours_docs):,} docs vs Megatron's {len(their_docs):,} ({why})"
    pairs = enumerate(zip(ours_docs, their_docs, strict=True))
    first = next((i for i, (a, b) in pairs if a != b), None)
    if first is not None:
        return False, f"doc {first}: {ours_docs[first]} tokens vs {their_docs[first]}"
    if ours_bin != their_bin:
        return False, "same document lengths, different ids (tokenizer or encoder)"
    return False, f"same .bin; .idx differs ({len(our_prefixes)} shards vs one file)"


if __name__ == "__main__":
    run_preprocess_data(sys.argv[1:])
