"""The job's tokenizer step: OUTPUT_DIR/tokenizer.model copied from tokenizer.model, reused, or
trained on a deterministic sample of the input.

Training is single-threaded (tokenizer.train_threads=1), so while it runs a second core would
idle. `ensure_tokenizer(..., alongside=writer)` trains in a forked child process and imports the
.bin/.idx writer (seconds, see megatron_io) in this process meanwhile. A thread would not do:
the import holds the GIL that SentencePiece's per-sentence callbacks need, and measured, a busy
thread made training 2-3x slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline import tokenizer as tk
from data_pipeline.config import InputConfig, PrepareConfig, TokenizerConfig
from data_pipeline.errors import OutputError
from data_pipeline.instruct import setup as instruct
from data_pipeline.instruct.examples import InstructSpec, training_text
from data_pipeline.instruct.templates import compile_template
from data_pipeline.listing import Source
from data_pipeline.manifest import MANIFEST
from data_pipeline.megatron_io import INDEXED_DATASET, WriterImport
from data_pipeline.progress import Progress
from data_pipeline.readers import iter_records
from data_pipeline.records import parse_record

log = logging.getLogger(__name__)
TOKENIZER = "tokenizer.model"
"""File name of the model in the output dir."""
TRAIN_RECORD = "tokenizer.train.json"
"""File name of the fingerprint of a trained model's settings and input (reuse check)."""


def _existing_tokenizer_shas(out: Path) -> dict[str, str]:
    """sha256 of the tokenizer each existing piece of data in `out` was made with."""
    found = {}
    manifest = out / MANIFEST
    if manifest.is_file():
        found[MANIFEST] = json.loads(manifest.read_text())["tokenizer"]["sha256"]
    for done in sorted(out.glob("shard_*.done.json")):
        try:
            found[done.name] = json.loads(done.read_text()).get("tokenizer_sha256", "?")
        except ValueError:  # not ours or damaged: verify_done rebuilds that shard anyway
            continue
    return found


def check_same_tokenizer(out: Path, sha: str) -> None:
    """OutputError when `out` holds a manifest or shards made with another tokenizer."""
    foreign = {name: s for name, s in _existing_tokenizer_shas(out).items() if s != sha}
    if foreign:
        name, other = next(iter(foreign.items()))
        raise OutputError(
            f"output.dir={str(out)!r} holds data made with another tokenizer ({name}: sha256 "
            f"{other[:12]}..., this run: {sha[:12]}...). Use a new output.dir, or set "
            "output.overwrite=true to delete the old shards and manifest."
        )


def _training_texts(
    sources: list[Source], inp: InputConfig, tok: TokenizerConfig, progress: Progress
) -> Iterator[str]:
    """A deterministic sample (seeded per record) of about tokenizer.sample_bytes of text."""
    estimate = sum(s.size * (4 if s.compression else 1) for s in sources)
    keep = min(1.0, tok.sample_bytes / max(estimate, 1))
    rng = random.Random(tok.seed)
    taken = 0
    spec = _spec(inp)
    compiled = compile_template(spec.template) if spec is not None else None
    for src in sources:
        for _, payload in iter_records(src, inp):
            progress.tick(len(payload) if isinstance(payload, bytes) else 0, 1, 0)
            if rng.random() >= keep:
                continue
            if spec is not None:  # an instruction example: its rendered text, markers removed
                text = training_text(src.record_kind, payload, spec, compiled)
            else:
                text, _ = parse_record(src.record_kind, payload, inp.text_key)
            if text is None:
                continue
            yield text
            taken += len(text.encode("utf-8"))
            if taken >= tok.sample_bytes:
                return
        if src.kind in ("parquet", "hf"):
            progress.tick(src.size, 0, 0)


def _spec(inp: InputConfig) -> InstructSpec | None:
    template = instruct.template_of(inp)
    return instruct.spec_of(inp, template) if template is not None else None


def _train_fingerprint(cfg: PrepareConfig, sources: list[Source]) -> dict[str, Any]:
    import sentencepiece

    inp, tok = cfg.input, cfg.tokenizer
    return {
        "options": tk.train_options(tok, instruct.special_tokens(inp)),
        "sample_bytes": tok.sample_bytes,
        "seed": tok.seed,
        "sentencepiece": sentencepiece.__version__,
        "inputs": [[s.path, s.size, s.record_kind] for s in sources],
        "read": [inp.text_key, inp.hf_split, *instruct.fingerprint_settings(_spec(inp)).values()],
    }


def train_on_sample(cfg: PrepareConfig, sources: list[Source]) -> tuple[bytes, float]:
    """(serialized model, time.monotonic() when training ended), trained in this process."""
    total = sum(s.size for s in sources)
    progress = Progress(total, "tokenizer sample", cfg.progress, show_tokens=False)
    try:
        texts = _training_texts(sources, cfg.input, cfg.tokenizer, progress)
        special = instruct.special_tokens(cfg.input)
        return tk.train_model(cfg.tokenizer, texts, special), time.monotonic()
    finally:
        progress.close()


def _ignore_sigint() -> None:
    """Pool initializer: Ctrl-C is handled by the parent, which terminates the child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train(
    cfg: PrepareConfig, sources: list[Source], alongside: WriterImport | None
) -> tuple[bytes, float]:
    """(model, time.monotonic() at the end of training): trained here, or in a forked child
    while `alongside` imports the writer here (see the module doc)."""
    started = time.monotonic()
    if alongside is not None and INDEXED_DATASET in sys.modules:  # imported: nothing to overlap
        alongside.load()
    if alongside is None or alongside.seconds is not None:
        data, trained_at = train_on_sample(cfg, sources)
    else:
        fork = multiprocessing.get_context("fork")
        with fork.Pool(1, _ignore_sigint) as pool:  # terminated on leaving, also on Ctrl-C
            training = pool.apply_async(train_on_sample, (cfg, sources))
            alongside.load("tokenizer training (in a child process)")
            data, trained_at = training.get()  # re-raises the child's ConfigError
        alongside.other_ended = trained_at
    if alongside is not None:
        alongside.other_s = trained_at - started
    return data, trained_at


def ensure_tokenizer(
    cfg: PrepareConfig, sources: list[Source], out: Path, alongside: WriterImport | None = None
) -> Path:
    """OUTPUT_DIR/tokenizer.model: a copy of tokenizer.model, reused, or trained (deterministic).

    When a model is trained and `alongside` is given (not yet loaded), the writer is imported
    here while a child process trains; without training it is left for the caller to load.
    """
    target = out / TOKENIZER
    if cfg.tokenizer.model is not None:
        source = Path(cfg.tokenizer.model).expanduser()
        tk.load_processor(source)  # ConfigError naming tokenizer.model when it is not a model
        data = source.read_bytes()
    else:
        fingerprint = _train_fingerprint(cfg, sources)
        record = out / TRAIN_RECORD
        if target.is_file() and record.is_file() and json.loads(record.read_text()) == fingerprint:
            log.info("reusing %s (trained earlier with the same settings and input)", target)
            return target
        started = time.monotonic()
        log.info(
            "training a %s SentencePiece model, vocab_size=%d, on ~%.1f MB of the input",
            cfg.tokenizer.type,
            cfg.tokenizer.vocab_size,
            cfg.tokenizer.sample_bytes / 1e6,
        )
        data, trained_at = _train(cfg, sources, alongside)
        log.info("tokenizer trained in %.1f s", trained_at - started)
    check_same_tokenizer(out, hashlib.sha256(data).hexdigest())
    if not target.is_file() or target.read_bytes() != data:
        tk.write_atomic(target, data)
    if cfg.tokenizer.model is None:
        tk.write_atomic(out / TRAIN_RECORD, json.dumps(fingerprint, indent=1).encode())
    else:  # a given model: forget any earlier training record so it is never mistaken for it
        (out / TRAIN_RECORD).unlink(missing_ok=True)
    return target
