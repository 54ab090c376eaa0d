"""The data-preparation job: inputs -> tokenizer -> shards -> manifest.json.

Python API (no Hydra needed)::

    from data_pipeline.config import InputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare
    out_dir = run_prepare(PrepareConfig(input=InputConfig(paths=["corpus.jsonl"]),
                                        tokenizer=TokenizerConfig(vocab_size=512)))
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from data_pipeline import tokenizer as tk
from data_pipeline.config import PrepareConfig, validate
from data_pipeline.diskspace import disk_full_guard
from data_pipeline.errors import DataError, OutputError
from data_pipeline.instruct import setup as instruct
from data_pipeline.instruct.examples import InstructSpec
from data_pipeline.listing import Source, list_sources
from data_pipeline.lock import OutputLock
from data_pipeline.manifest import MANIFEST, build_manifest, write_manifest
from data_pipeline.megatron_io import WriterImport, indexed_dataset
from data_pipeline.plan import ShardPlan, num_shards_for, plan_shards, slice_of
from data_pipeline.progress import Progress, summary_table
from data_pipeline.shard import (
    ShardContext,
    build_shard,
    make_pool,
    max_tasks,
    usable_cpus,
    verify_done,
    worker_count,
)
from data_pipeline.tokenizer_step import (
    TOKENIZER,
    TRAIN_RECORD,
    check_same_tokenizer,
    ensure_tokenizer,
)

log = logging.getLogger(__name__)


def _clear_outputs(out: Path, model: str | None) -> None:
    """Delete our files in `out`, except the given model (tokenizer.model=OUT/tokenizer.model)."""
    keep = Path(model).expanduser().resolve() if model else None
    patterns = [MANIFEST, TOKENIZER, TRAIN_RECORD, "shard_*", ".shard_*", f".{MANIFEST}.tmp-*"]
    found = [p for pattern in patterns for p in out.glob(pattern) if p.is_file()]
    removed = [p for p in found if p.resolve() != keep]
    for path in removed:
        path.unlink()
    log.info("output.overwrite=true: removed %d files from %s", len(removed), out)


def _remove_stale(out: Path, plans: list[ShardPlan], records: list[dict], masks: bool) -> None:
    """Delete shard files of other plans, data files of shards that are empty in this one, and
    loss masks of a run that wrote none (left by an earlier run with other inputs): only
    manifest shards may look like data."""
    keep = {p.prefix for p in plans}
    empty = {r["prefix"] for r in records if r["num_docs"] == 0}
    for path in sorted(out.glob("shard_*")):
        prefix = path.name.split(".")[0]
        data = path.suffix in (".bin", ".idx")
        stale_mask = not masks and data and path.name.endswith((".loss_mask.bin", ".loss_mask.idx"))
        if prefix not in keep or (prefix in empty and data) or stale_mask:
            log.info("removing %s (not part of this plan)", path.name)
            path.unlink()


def _make_output_dir(out: Path) -> None:
    """Create output.dir and check that it is writable (OutputError naming the key otherwise)."""
    probe = out / f".write-test.{tk.tmp_suffix()}"
    if out.exists() and not out.is_dir():
        raise OutputError(f"output.dir={str(out)!r} is a file, not a directory: give a dir path")
    try:
        with disk_full_guard(probe, "a probe file"):  # e.g. no inode left
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
    if todo:
        tasks = max_tasks(todo, ctx.sources, cfg.batch_bytes)
        ctx.workers = worker_count(cfg.workers, usable_cpus(), tasks)
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


def _context(
    cfg: PrepareConfig, out: Path, sources: list[Source], info: dict, spec: InstructSpec | None
) -> ShardContext:
    dtype = indexed_dataset().DType.optimal_dtype(info["vocab_size"]).__name__
    settings = {"text_key": cfg.input.text_key, "hf_split": cfg.input.hf_split, "dtype": dtype}
    return ShardContext(
        out_dir=out,
        sources=sources,
        inp=cfg.input,
        model_path=str(out / TOKENIZER),
        tokenizer_sha256=info["sha256"],
        eod=info["eod_id"],
        dtype=dtype,
        settings={**settings, **instruct.fingerprint_settings(spec)},
        batch_bytes=cfg.batch_bytes,
        verify_docs=cfg.tokenizer.verify_docs,
        workers=cfg.workers,
        instruct=spec,
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
    if ctx.instruct is not None:
        manifest["instruct"] = instruct.manifest_block(ctx.instruct, ordered)
    if manifest["totals"]["num_docs"] == 0:
        raise DataError(
            f"no document survived (skipped: {manifest['skipped']['counts']}); check input.paths "
            f"and input.text_key={cfg.input.text_key!r}"
        )
    write_manifest(ctx.out_dir, manifest)
    return manifest


def run_prepare(cfg: PrepareConfig) -> Path:
    """Run the job described by `cfg`; return the output dir (complete when slice.count == 1).

    The output dir is locked for the whole job (data_pipeline.lock): OutputError naming the
    holder when another job writes it. DiskFullError (an OutputError) when it fills up.
    """
    started = time.perf_counter()
    validate(cfg)
    if cfg.input.is_images():  # image-caption pairs: tar shards (data_pipeline.images)
        return _run_images(cfg, started)
    spec = instruct.build_spec(cfg.input, cfg.tokenizer.model)  # before anything is written
    out = cfg.output_dir()
    _make_output_dir(out)
    with OutputLock(out, cfg.stage, *cfg.slice.resolved()):
        return _run_locked(cfg, out, started, spec)


def _run_images(cfg: PrepareConfig, started: float) -> Path:
    """The image-text job (docs/data_preparation.md, "Image-text data"), in the same locked,
    writable output dir."""
    from data_pipeline.images import job

    inputs = job.check(cfg)  # before anything is written
    out = cfg.output_dir()
    _make_output_dir(out)
    with OutputLock(out, cfg.stage, *cfg.slice.resolved()):
        return job.run_locked(cfg, out, started, inputs)


def _run_locked(cfg: PrepareConfig, out: Path, started: float, spec: InstructSpec | None) -> Path:
    """run_prepare once the output dir is known to be writable and is locked."""
    if cfg.output.overwrite and cfg.stage != "finalize":
        _clear_outputs(out, cfg.tokenizer.model)
    sources = list_sources(cfg.input, out)
    log.info("%d inputs, %.1f MB, in %s", len(sources), sum(s.size for s in sources) / 1e6, out)
    # the .bin/.idx writer's import (torch + megatron.core, seconds) runs alongside training
    writer = WriterImport() if cfg.stage != "tokenizer" else None
    model_path = ensure_tokenizer(cfg, sources, out, writer)
    if spec is not None:  # a trained model reserves them; an earlier run's copy is re-checked
        instruct.check_special_tokens(model_path, spec.template.special_tokens, str(model_path))
    if writer is None:
        return out
    timings = {"started": started, "tokenizer_s": round(time.perf_counter() - started, 3)}
    _shards_and_manifest(cfg, out, sources, model_path, writer, timings, spec)
    return out


def _shards_and_manifest(
    cfg: PrepareConfig,
    out: Path,
    sources: list[Source],
    model_path: Path,
    writer: WriterImport,
    timings: dict[str, float],
    spec: InstructSpec | None,
) -> None:
    """Plan and build this slice's shards, then (one slice, or stage=finalize) the manifest.

    `timings` holds `started` (perf_counter at the job's start) and `tokenizer_s`; the manifest
    gets them with `started` replaced by `total_s`.
    """
    info = tk.tokenizer_info(model_path, TOKENIZER)
    check_same_tokenizer(out, info["sha256"])
    (out / MANIFEST).unlink(missing_ok=True)
    encoder, why = tk.choose_encoder(cfg.tokenizer.encoder, model_path)
    if spec is not None:
        encoder, why = "sentencepiece", "instruction data needs piece offsets (kitoken has none)"
    log.info("encoder: %s (%s)", encoder, why)
    writer.load()  # when no training ran alongside: now (logged, with its time)
    ctx = _context(cfg, out, sources, info, spec)
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
        return
    ordered = _all_records(plans, records, ctx)
    _remove_stale(out, plans, ordered, spec is not None)
    timings.update(shards_s=round(shards_s, 3), **writer.timings())
    timings["total_s"] = round(time.perf_counter() - timings.pop("started"), 3)
    run = {"index": index, "count": count, "info": info, "encoder": encoder, "why": why}
    manifest = _finish(cfg, ctx, ordered, {**run, "timings": timings})
    summary = summary_table({**manifest, "output_dir": str(out)}, built, len(ordered) - built)
    log.info("summary\n%s", summary)
