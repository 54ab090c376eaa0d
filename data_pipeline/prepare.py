"""The data-preparation job: inputs -> tokenizer -> shards -> manifest.json.

Python API (no Hydra needed)::

    from data_pipeline.config import InputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare
    out_dir = run_prepare(PrepareConfig(input=InputConfig(paths=["corpus.jsonl"]),
                                        tokenizer=TokenizerConfig(vocab_size=512)))
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline import tokenizer as tk
from data_pipeline.config import InputConfig, PrepareConfig, TokenizerConfig, validate
from data_pipeline.errors import DataError, OutputError
from data_pipeline.manifest import MANIFEST, build_manifest, write_manifest
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.plan import ShardPlan, num_shards_for, plan_shards, slice_of
from data_pipeline.progress import Progress, summary_table
from data_pipeline.records import parse_record
from data_pipeline.shard import ShardContext, build_shard, make_pool, verify_done
from data_pipeline.sources import Source, iter_records, list_sources

log = logging.getLogger(__name__)
TOKENIZER = "tokenizer.model"
TRAIN_RECORD = "tokenizer.train.json"


def _clear_outputs(out: Path, model: str | None) -> None:
    """Delete our files in `out`, except the given model (tokenizer.model=OUT/tokenizer.model)."""
    keep = Path(model).expanduser().resolve() if model else None
    patterns = [MANIFEST, TOKENIZER, TRAIN_RECORD, "shard_*", ".shard_*", f".{MANIFEST}.tmp-*"]
    found = [p for pattern in patterns for p in out.glob(pattern) if p.is_file()]
    removed = [p for p in found if p.resolve() != keep]
    for path in removed:
        path.unlink()
    log.info("output.overwrite=true: removed %d files from %s", len(removed), out)


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


def _check_same_tokenizer(out: Path, sha: str) -> None:
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
    for src in sources:
        for _, payload in iter_records(src, inp):
            progress.tick(len(payload) if isinstance(payload, bytes) else 0, 1, 0)
            if rng.random() >= keep:
                continue
            text, _ = parse_record(src.record_kind, payload, inp.text_key)
            if text is None:
                continue
            yield text
            taken += len(text.encode("utf-8"))
            if taken >= tok.sample_bytes:
                return
        if src.kind in ("parquet", "hf"):
            progress.tick(src.size, 0, 0)


def _train_fingerprint(cfg: PrepareConfig, sources: list[Source]) -> dict[str, Any]:
    import sentencepiece

    inp, tok = cfg.input, cfg.tokenizer
    return {
        "options": tk.train_options(tok),
        "sample_bytes": tok.sample_bytes,
        "seed": tok.seed,
        "sentencepiece": sentencepiece.__version__,
        "inputs": [[s.path, s.size, s.record_kind] for s in sources],
        "read": [inp.text_key, inp.hf_split],
    }


def ensure_tokenizer(cfg: PrepareConfig, sources: list[Source], out: Path) -> Path:
    """OUTPUT_DIR/tokenizer.model: a copy of tokenizer.model, reused, or trained (deterministic)."""
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
        started = time.perf_counter()
        log.info(
            "training a %s SentencePiece model, vocab_size=%d, on ~%.1f MB of the input",
            cfg.tokenizer.type,
            cfg.tokenizer.vocab_size,
            cfg.tokenizer.sample_bytes / 1e6,
        )
        total = sum(s.size for s in sources)
        progress = Progress(total, "tokenizer sample", cfg.progress, show_tokens=False)
        try:
            texts = _training_texts(sources, cfg.input, cfg.tokenizer, progress)
            data = tk.train_model(cfg.tokenizer, texts)
        finally:
            progress.close()
        log.info("tokenizer trained in %.1f s", time.perf_counter() - started)
    _check_same_tokenizer(out, hashlib.sha256(data).hexdigest())
    if not target.is_file() or target.read_bytes() != data:
        tk.write_atomic(target, data)
    if cfg.tokenizer.model is None:
        tk.write_atomic(out / TRAIN_RECORD, json.dumps(fingerprint, indent=1).encode())
    else:  # a given model: forget any earlier training record so it is never mistaken for it
        (out / TRAIN_RECORD).unlink(missing_ok=True)
    return target


def _remove_stale(out: Path, plans: list[ShardPlan], records: list[dict]) -> None:
    """Delete shard files of other plans, and data files of shards that are empty in this one
    (left by an earlier run with other inputs): only manifest shards may look like data."""
    keep = {p.prefix for p in plans}
    empty = {r["prefix"] for r in records if r["num_docs"] == 0}
    for path in sorted(out.glob("shard_*")):
        prefix = path.name.split(".")[0]
        if prefix not in keep or (prefix in empty and path.suffix in (".bin", ".idx")):
            log.info("removing %s (not part of this plan)", path.name)
            path.unlink()


def _make_output_dir(out: Path) -> None:
    """Create output.dir and check that it is writable (OutputError naming the key otherwise)."""
    probe = out / f".write-test.{tk.tmp_suffix()}"
    if out.exists() and not out.is_dir():
        raise OutputError(f"output.dir={str(out)!r} is a file, not a directory: give a dir path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"output.dir={str(out)!r} cannot be used ({e.strerror or e}): give a writable "
            "directory path (it is created if missing)."
        ) from e


def _build_all(mine: list[ShardPlan], ctx: ShardContext, encoder: str, cfg: PrepareConfig):
    records, built = {}, 0
    todo = []
    for plan in mine:
        record = verify_done(plan, ctx)
        if record is None:
            todo.append(plan)
        else:
            records[plan.prefix] = record
            log.info("%s: reusing (checksums verified)", plan.prefix)
    total = sum(p.input_bytes() for p in todo)
    ctx.pool = make_pool(ctx, encoder) if todo else None  # fork before tqdm starts a thread
    progress = Progress(total, "tokenizing", cfg.progress and bool(todo))
    try:
        for plan in todo:
            for stale in ctx.out_dir.glob(f".{plan.prefix}.tmp-*"):
                stale.unlink()
            records[plan.prefix] = build_shard(plan, ctx, encoder, progress.tick)
            built += 1
    finally:
        progress.close()
        if ctx.pool is not None:
            ctx.pool.terminate()
            ctx.pool.join()
    return records, built


def _context(cfg: PrepareConfig, out: Path, sources: list[Source], info: dict) -> ShardContext:
    dtype = indexed_dataset().DType.optimal_dtype(info["vocab_size"]).__name__
    return ShardContext(
        out_dir=out,
        sources=sources,
        inp=cfg.input,
        model_path=str(out / TOKENIZER),
        tokenizer_sha256=info["sha256"],
        eod=info["eod_id"],
        dtype=dtype,
        settings={"text_key": cfg.input.text_key, "hf_split": cfg.input.hf_split, "dtype": dtype},
        batch_bytes=cfg.batch_bytes,
        verify_docs=cfg.tokenizer.verify_docs,
        workers=cfg.workers,
    )


def _all_records(plans: list[ShardPlan], records: dict, ctx: ShardContext) -> list[dict]:
    """Done records of every planned shard (verified); OutputError listing the missing ones."""
    missing = []
    for plan in plans:
        if plan.prefix not in records:
            record = verify_done(plan, ctx)
            if record is None:
                missing.append(plan.prefix)
            else:
                records[plan.prefix] = record
    if missing:
        raise OutputError(
            f"stage=finalize: {len(missing)} shards are missing or do not verify "
            f"({', '.join(missing[:5])}...). Run the slices that build them first."
        )
    return [records[p.prefix] for p in plans]


def _finish(cfg: PrepareConfig, ctx: ShardContext, ordered: list[dict], run: dict) -> dict:
    """Build and write manifest.json (the last file); return it."""
    config = cfg.to_dict()
    config["slice"] = {"index": run["index"], "count": run["count"]}
    per_shard = {r["prefix"]: r["encoder"] for r in ordered if r["num_docs"]}
    manifest = build_manifest(
        ordered,
        run["info"],
        ctx.dtype,
        [{"path": s.path, "size": s.size} for s in ctx.sources],
        config,
        run["timings"],
        cfg.input.max_examples,
        {"name": run["encoder"], "why": run["why"], "per_shard": per_shard},
    )
    if manifest["totals"]["num_docs"] == 0:
        raise DataError(
            f"no document survived (skipped: {manifest['skipped']['counts']}); check input.paths "
            f"and input.text_key={cfg.input.text_key!r}"
        )
    write_manifest(ctx.out_dir, manifest)
    return manifest


def run_prepare(cfg: PrepareConfig) -> Path:
    """Run the job described by `cfg`; return the output dir (complete when slice.count == 1)."""
    started = time.perf_counter()
    validate(cfg)
    out = cfg.output_dir()
    _make_output_dir(out)
    if cfg.output.overwrite and cfg.stage != "finalize":
        _clear_outputs(out, cfg.tokenizer.model)
    sources = list_sources(cfg.input, out)
    log.info("%d inputs, %.1f MB, in %s", len(sources), sum(s.size for s in sources) / 1e6, out)
    model_path = ensure_tokenizer(cfg, sources, out)
    tokenizer_s = time.perf_counter() - started
    if cfg.stage == "tokenizer":
        return out
    info = tk.tokenizer_info(model_path, TOKENIZER)
    _check_same_tokenizer(out, info["sha256"])
    (out / MANIFEST).unlink(missing_ok=True)
    encoder, why = tk.choose_encoder(cfg.tokenizer.encoder, model_path)
    log.info("encoder: %s (%s)", encoder, why)
    ctx = _context(cfg, out, sources, info)
    plans = plan_shards(
        sources, num_shards_for(sources, cfg.output.num_shards, cfg.output.shard_input_mb)
    )
    index, count = cfg.slice.resolved()
    mine = slice_of(plans, index, count) if cfg.stage == "all" else []
    log.info(
        "%d shards planned; slice %d/%d builds %d of them", len(plans), index, count, len(mine)
    )
    shards_started = time.perf_counter()
    records, built = _build_all(mine, ctx, encoder, cfg)
    shards_s = time.perf_counter() - shards_started
    if count > 1 and cfg.stage == "all":
        log.info(
            "slice %d/%d done (%d shards built); after every slice finished, run the same "
            "command with stage=finalize to write %s",
            index,
            count,
            built,
            MANIFEST,
        )
        return out
    ordered = _all_records(plans, records, ctx)
    _remove_stale(out, plans, ordered)
    timings = {
        "total_s": round(time.perf_counter() - started, 3),
        "tokenizer_s": round(tokenizer_s, 3),
        "shards_s": round(shards_s, 3),
    }
    run = {
        "index": index,
        "count": count,
        "info": info,
        "encoder": encoder,
        "why": why,
        "timings": timings,
    }
    manifest = _finish(cfg, ctx, ordered, run)
    summary = summary_table({**manifest, "output_dir": str(out)}, built, len(ordered) - built)
    log.info("summary\n%s", summary)
    return out
