"""The image-text job: inputs -> tokenizer (trained on the captions, or given) -> tar shards ->
manifest.json (docs/data_format.md, "Image-text data").

`check` runs before the output dir is touched (every setting, the given tokenizer's image
piece, the inputs exist); `run_locked` runs inside the caller's OutputLock. manifest.json is
deleted before the first shard is written and written last, so a dir whose run failed or was
killed never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline import tokenizer as tk
from data_pipeline.config import PrepareConfig
from data_pipeline.errors import DataError, OutputError
from data_pipeline.images.checks import check_image_token, validate_images
from data_pipeline.images.process import BadImage, open_image, png_bytes, preprocess
from data_pipeline.images.report import Skips, build_manifest, summary
from data_pipeline.images.shards import ShardWriter
from data_pipeline.images.sources import ImageInput, RawSample, iter_samples, list_inputs
from data_pipeline.manifest import MANIFEST, write_manifest
from data_pipeline.tokenizer_step import TOKENIZER, TRAIN_RECORD, check_same_tokenizer

log = logging.getLogger(__name__)


def check(cfg: PrepareConfig) -> list[ImageInput]:
    """Everything that can be checked before writing (ConfigError); the inputs, in order."""
    validate_images(cfg)
    if cfg.tokenizer.model is not None:
        check_image_token(Path(cfg.tokenizer.model).expanduser(), cfg.images.image_token)
    return list_inputs(cfg.input)


def _clear(out: Path, model: str | None) -> None:
    """output.overwrite=true: delete our files in `out` (except a given model inside it)."""
    keep = Path(model).expanduser().resolve() if model else None
    patterns = [MANIFEST, TOKENIZER, TRAIN_RECORD, "shard_*", ".shard_*", f".{MANIFEST}.tmp-*"]
    found = {p for pattern in patterns for p in out.glob(pattern) if p.is_file()}
    for path in sorted(found):
        if path.resolve() != keep:
            path.unlink()
    log.info("output.overwrite=true: cleared %s", out)


def _refuse_other_data(out: Path, cfg: PrepareConfig) -> None:
    """OutputError when `out` holds text shards, or image data of another synthetic subset."""
    text = sorted(p.name for p in out.glob("shard_*") if p.suffix in (".bin", ".idx"))
    if text:
        raise OutputError(
            f"output.dir={str(out)!r} holds text data ({text[0]}, ...); image-text data needs "
            "its own dir: use another output.dir, or output.overwrite=true to delete it."
        )
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):  # none, or damaged: it is deleted before any shard is written
        old = {}
    synthetic = (old.get("image_text") or {}).get("synthetic") or {}
    if synthetic.get("subset") not in (None, cfg.input.subset):
        raise OutputError(
            f"output.dir={str(out)!r} holds the {synthetic['subset']!r} synthetic subset, this "
            f"run makes input.subset={cfg.input.subset!r}: give each split its own output.dir, "
            "or set output.overwrite=true."
        )


def _captions(samples: Iterator[RawSample], budget: int) -> Iterator[str]:
    """The non-empty captions in input order, up to `budget` bytes (the tokenizer sample)."""
    taken = 0
    for raw in samples:
        text = (raw.caption or "").strip()
        if raw.problem is None and text:
            yield text
            taken += len(text.encode("utf-8"))
            if taken >= budget:
                return


def _tokenizer(cfg: PrepareConfig, inputs: list[ImageInput], out: Path) -> Path:
    """OUTPUT_DIR/tokenizer.model: a copy of tokenizer.model, or trained on the captions."""
    if cfg.tokenizer.model is not None:
        data = Path(cfg.tokenizer.model).expanduser().read_bytes()
    else:
        started = time.perf_counter()
        samples = iter_samples(cfg.input, inputs, cfg.images.size)
        data = tk.train_model(cfg.tokenizer, _captions(samples, cfg.tokenizer.sample_bytes))
        log.info(
            "trained a %d-piece tokenizer on the captions in %.1f s",
            cfg.tokenizer.vocab_size,
            time.perf_counter() - started,
        )
    check_same_tokenizer(out, hashlib.sha256(data).hexdigest())
    target = out / TOKENIZER
    if not target.is_file() or target.read_bytes() != data:
        tk.write_atomic(target, data)
    (out / TRAIN_RECORD).unlink(missing_ok=True)  # never mistaken for a text run's record
    return target


def _image_of(raw: RawSample, size: int) -> tuple[bytes, str]:
    """(PNG of the preprocessed image, stripped caption); BadImage with the skip reason."""
    if raw.problem is not None:
        raise BadImage(*raw.problem)
    caption = (raw.caption or "").strip()
    if raw.caption is None:
        raise BadImage("missing_caption", "no caption")
    if not caption:
        raise BadImage("empty_caption", "the caption is empty")
    img = raw.image if raw.image is not None else open_image(raw.path, raw.data)
    return png_bytes(preprocess(img, size)), caption


def _progress(cfg: PrepareConfig) -> Any:
    from tqdm import tqdm

    total = cfg.input.synthetic_count if cfg.input.format == "synthetic_images" else None
    return tqdm(
        total=total,
        desc="images",
        unit="img",
        file=sys.stderr,
        disable=not cfg.progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _write_shards(
    cfg: PrepareConfig, inputs: list[ImageInput], out: Path, model: Path, skips: Skips
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Write every shard; (shard entries, caption token stats)."""
    sp = tk.load_processor(model)
    shards: list[dict[str, Any]] = []
    stats = {"num_samples": 0, "num_caption_tokens": 0, "max_caption_tokens": 0}
    writer: ShardWriter | None = None
    bar = _progress(cfg)
    try:
        for raw in iter_samples(cfg.input, inputs, cfg.images.size):
            bar.update(1)
            try:
                png, caption = _image_of(raw, cfg.images.size)
            except BadImage as e:
                skips.add(e.reason, raw.label, e.detail)
                continue
            if writer is None:
                writer = ShardWriter(out, len(shards))
            ids = sp.encode(caption)
            writer.add(stats["num_samples"], png, caption, ids)
            stats["num_samples"] += 1
            stats["num_caption_tokens"] += len(ids)
            stats["max_caption_tokens"] = max(stats["max_caption_tokens"], len(ids))
            if len(writer) == cfg.images.samples_per_shard:
                shards.append(writer.close())
                writer = None
        if writer is not None:
            shards.append(writer.close())
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    return shards, stats


def _remove_stale(out: Path, shards: list[dict[str, Any]]) -> None:
    """Delete shard files of an earlier run that this one did not write (e.g. more shards)."""
    keep = {s["tar"] for s in shards} | {s["index"] for s in shards}
    for path in sorted(out.glob("shard_*")):
        if path.name not in keep:
            log.info("removing %s (not written by this run)", path.name)
            path.unlink()


def run_locked(cfg: PrepareConfig, out: Path, started: float, inputs: list[ImageInput]) -> Path:
    """The job, once `out` is known writable and locked; returns `out` (complete)."""
    if cfg.output.overwrite:
        _clear(out, cfg.tokenizer.model)
    _refuse_other_data(out, cfg)
    model = _tokenizer(cfg, inputs, out)
    info = tk.tokenizer_info(model, TOKENIZER)
    image_token_id = check_image_token(model, cfg.images.image_token)
    tokenizer_s = time.perf_counter() - started
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the dir is incomplete
    for stale in out.glob(".shard_*.tmp-*"):
        stale.unlink()
    skips = Skips(cfg.input.on_error == "fail", cfg.input.max_examples)
    shards, stats = _write_shards(cfg, inputs, out, model, skips)
    if not stats["num_samples"]:
        raise DataError(
            f"no image-caption pair survived (skipped: {skips.counts}, e.g. {skips.examples}); "
            "check input.paths, input.format, input.image_key and input.text_key"
        )
    _remove_stale(out, shards)
    timings = {
        "tokenizer_s": round(tokenizer_s, 3),
        "shards_s": round(time.perf_counter() - started - tokenizer_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    run = {"info": info, "image_token_id": image_token_id, "timings": timings}
    manifest = build_manifest(cfg, inputs, shards, stats, skips, run)
    write_manifest(out, manifest)
    log.info("summary\n%s", summary(manifest, out))
    return out
