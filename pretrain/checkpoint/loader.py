"""Which checkpoint a run starts from, the checks before loading it, and restoring it.

With `checkpoint.resume=auto`, a damaged checkpoint (a file missing, truncated, corrupt, failing
its checksum, or NaN/Inf weights: `verify`) is skipped with a warning naming what is wrong, and
the next older complete checkpoint is tried. Once one loads, the damaged newer ones are set
aside as `iter_XXXXXXX.damaged` (kept, never loaded or rotated again) and `latest` names the
one loaded. If every checkpoint is damaged the run stops (exit 2), renaming nothing. An explicit
`checkpoint.load` is never replaced: a damaged one is a one-line error naming the file (exit 2).
A file that would run code (`UnsafeCheckpoint`) is refused outright, never skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain import faults
from pretrain.checkpoint import adapters, layout, meta, state, verify
from pretrain.checkpoint.async_save import prepare_dist_checkpointing
from pretrain.checkpoint.collective import world
from pretrain.checkpoint.errors import CheckpointError, DamagedCheckpoint
from pretrain.config import CheckpointConfig

if TYPE_CHECKING:
    from pretrain.context import TrainContext
    from pretrain.state import TrainState

log = logging.getLogger("pretrain.checkpoint")

RESUME_CHOICES = ("auto", "never")
"""Allowed values of checkpoint.resume."""

_LAYOUT_KEYS = (
    "world_size",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "data_parallel_size",
)


def check_options(cfg: CheckpointConfig) -> None:
    """CheckpointError for checkpoint.* values that make no sense (before any training step)."""
    if cfg.resume not in RESUME_CHOICES:
        raise CheckpointError(f"checkpoint.resume={cfg.resume!r}: choose one of {RESUME_CHOICES}")
    for key in ("save_interval", "save_interval_minutes", "keep_last"):
        if getattr(cfg, key) < 0:
            raise CheckpointError(
                f"checkpoint.{key}={getattr(cfg, key)} is negative; use 0 to turn it off "
                "(keep_last=0 keeps all checkpoints)"
            )


def candidates(cfg: CheckpointConfig, run_dir: Path) -> tuple[list[Path], bool, bool]:
    """(checkpoints to try in order, weights only, whether checkpoint.load named the one).

    A complete checkpoint in this run's own directory always wins (with resume=auto), so a
    preempted and requeued job resumes itself even when its command line has checkpoint.load;
    the run's older complete checkpoints follow, newest first, as fallbacks.
    """
    check_options(cfg)
    if cfg.resume == "auto":
        own = layout.read_latest(run_dir)
        if own is not None:
            if cfg.load:
                log.info(
                    "resuming %s; checkpoint.load=%s is ignored (run has its own)", own, cfg.load
                )
            older = [p for p in layout.list_complete(run_dir) if _step(p) < _step(own)]
            return [own, *reversed(older)], False, False
    if cfg.load:
        try:
            return [layout.resolve_load_path(Path(cfg.load))], bool(cfg.weights_only), True
        except FileNotFoundError as exc:
            raise CheckpointError(str(exc)) from exc
    if cfg.weights_only:
        log.warning("checkpoint.weights_only=true has no effect without checkpoint.load")
    return [], False, False


def _step(path: Path) -> int:
    return layout.step_of(path) or 0


def choose_checkpoint(cfg: CheckpointConfig, run_dir: Path) -> tuple[Path | None, bool]:
    """Which checkpoint to start from (before any fallback), and whether to take only weights."""
    paths, weights_only, _ = candidates(cfg, run_dir)
    return (paths[0] if paths else None), weights_only


def load_at_start(ctx: TrainContext) -> None:
    """Restore model/optimizer/scheduler/TrainState/RNG from a checkpoint, if one applies."""
    prepare_dist_checkpointing()
    paths, weights_only, explicit = candidates(ctx.cfg.checkpoint, ctx.run_dir)
    if not paths:
        log.info("no checkpoint to resume in %s: starting from step 0", ctx.run_dir)
        return
    path = _load_first_good(ctx, paths, weights_only, explicit)
    ctx.saver.last_save_time = time.monotonic()
    if path.parent.resolve() == ctx.run_dir.resolve():
        ctx.saver.last_saved_step = ctx.state.step  # this run dir already has this step
    if ctx.dist.is_rank0:
        faults.clear_marker(ctx.run_dir)


def _load_first_good(
    ctx: TrainContext, paths: list[Path], weights_only: bool, explicit: bool
) -> Path:
    """Load the first checkpoint of `paths` that is not damaged (see the module docstring)."""
    damaged: list[DamagedCheckpoint] = []
    for path in paths:
        try:
            load_checkpoint(ctx, path, weights_only)
        except DamagedCheckpoint as exc:
            if explicit:
                raise
            damaged.append(exc)
            if ctx.dist.is_rank0:
                log.warning("%s; trying an older checkpoint (checkpoint.resume=auto)", exc)
            continue
        if damaged:
            _set_aside(ctx.run_dir, damaged, path)
        return path
    raise CheckpointError(
        f"every checkpoint in run.dir={ctx.run_dir} is damaged: "
        + " | ".join(str(d) for d in damaged)
        + ". Restore the files, move the checkpoints away, or start over with "
        "checkpoint.resume=never (which overwrites them step by step)"
    )


def _set_aside(run_dir: Path, damaged: list[DamagedCheckpoint], loaded: Path) -> None:
    """Rank 0: rename damaged checkpoints to `*.damaged`, point `latest` at `loaded` (sync)."""
    from pretrain.parallel import barrier

    if world()[0] == 0:
        try:
            for exc in damaged:
                target = layout.set_aside(exc.path)
                log.warning("kept the damaged checkpoint as %s (not loaded again)", target)
            layout.write_latest(run_dir, loaded.name)
        except OSError as exc:  # e.g. a read-only run.dir: the next save fails clearly
            log.warning("could not set the damaged checkpoints aside: %s", exc)
        log.warning("resumed from %s, the newest checkpoint that is not damaged", loaded)
    barrier()


def load_checkpoint(ctx: TrainContext, path: Path, weights_only: bool = False) -> dict[str, Any]:
    """Verify and load `path` into the context (collective); returns its meta.json.

    DamagedCheckpoint when its files are damaged or it holds NaN/Inf (the model may then be
    partly overwritten: load another checkpoint or stop).
    """
    start = time.perf_counter()
    verify.inspect(path, ctx.cfg.checkpoint.verify_checksums)
    saved = meta.read_meta(path)
    part = _model_part(ctx, saved, path, weights_only)
    if part == "adapters":
        _load_base(ctx, adapters.check_base(saved["peft"], path))
        ctx.saver.peft_base = dict(saved["peft"]["base"])
    elif part == "base":
        ctx.saver.peft_base = adapters.base_record(path)
    vocab = meta.tokenizer_vocab(ctx.cfg, ctx.data_manifests)
    meta.check_compatible(saved, path, ctx.cfg, ctx.data_manifests, vocab, weights_only)
    for note in [] if weights_only else meta.resume_changes(saved, ctx.cfg):
        log.warning("resuming %s with a changed config: %s", path, note)
    now = meta.layout_of(ctx.cfg, ctx.dist)
    same_layout = _same_layout(saved.get("layout", {}), now)
    if not weights_only and not same_layout:
        log.warning(
            "checkpoint %s was saved at layout %s, loading at %s: weights and optimizer are "
            "resharded; RNG states are re-seeded (dropout draws differ from an uninterrupted run)",
            path,
            _layout_str(saved.get("layout", {})),
            ctx.dist.layout_str(),
        )
    request = state.build_load_request(
        ctx, weights_only, with_rng=same_layout, rng_keys=saved.get("rng_keys"), part=part
    )
    loaded = verify.read_tensors(request, path)
    if not weights_only:
        loaded.setdefault("train_state", saved["train_state"])
    configured = meta.schedule_of(ctx.scheduler)
    state.apply_loaded(ctx, loaded, weights_only, part)
    if not weights_only:
        _copy_state(ctx.state, loaded["train_state"])
        restored = meta.schedule_of(ctx.scheduler)
        for note in meta.schedule_changes(configured, restored):
            log.warning("resuming %s: %s", path, note)
    log.info(
        "loaded %s%s in %.2fs (step %d, %d samples consumed)",
        path,
        " (weights only)" if weights_only else "",
        time.perf_counter() - start,
        ctx.state.step,
        ctx.state.consumed_samples,
    )
    return saved


def _model_part(ctx: TrainContext, saved: dict[str, Any], path: Path, weights_only: bool) -> str:
    """Which model tensors to read from `path`: all (full runs), base or adapters (LoRA)."""
    lora_now = state.model_part(ctx.model) == "adapters"
    saved_peft = saved.get("peft")
    if saved_peft and not lora_now:
        raise CheckpointError(
            f"{path} is a LoRA checkpoint (adapters only, on the base "
            f"{(saved_peft.get('base') or {}).get('path')}): continue it with peft=lora, or "
            "export the merged model with python -m pretrain.export_hf checkpoint=" + str(path)
        )
    if not lora_now:
        return "all"
    if saved_peft:
        adapters.check_same_adapters(saved_peft, ctx.cfg.peft, path)
        return "adapters"
    if not weights_only:
        raise CheckpointError(
            f"{path} is a full checkpoint, not a LoRA one: peft=lora starts from a base only with "
            "checkpoint.load=BASE checkpoint.weights_only=true (use another run.dir, or "
            "checkpoint.resume=never)"
        )
    return "base"


def _load_base(ctx: TrainContext, base: Path) -> None:
    """Read a LoRA checkpoint's base weights (everything but the adapters) into the model."""
    verify.inspect(base, ctx.cfg.checkpoint.verify_checksums)
    saved = meta.read_meta(base)
    if saved.get("peft"):
        raise CheckpointError(f"LoRA base {base} is itself a LoRA checkpoint: not supported")
    vocab = meta.tokenizer_vocab(ctx.cfg, ctx.data_manifests)
    meta.check_compatible(saved, base, ctx.cfg, ctx.data_manifests, vocab, weights_only=True)
    request = state.build_load_request(ctx, True, with_rng=False, part="base")
    loaded = verify.read_tensors(request, base)
    chunks = [state.unwrap(m) for m in ctx.model]
    for i, chunk in enumerate(chunks):
        state.load_model_part(chunk, loaded[state.model_key(i, len(chunks))], "base")
    log.info("loaded the LoRA base %s", base)


def _copy_state(target: TrainState, data: dict[str, Any]) -> None:
    fresh = type(target).from_dict(data)
    for f in fields(fresh):
        setattr(target, f.name, getattr(fresh, f.name))


def _same_layout(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    return all(saved.get(k) == now.get(k) for k in _LAYOUT_KEYS)


def _layout_str(lay: dict[str, Any]) -> str:
    return (
        f"TP{lay.get('tensor_model_parallel_size')}xPP{lay.get('pipeline_model_parallel_size')}"
        f"xDP{lay.get('data_parallel_size')}"
    )
