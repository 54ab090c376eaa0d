"""Sharded checkpoints on megatron-core `dist_checkpointing`: save, resume, keep-last, async.

Call sites (see the interface with `pretrain.train`): `load_at_start(ctx)` once after the model,
optimizer, scheduler and TrainState exist; `maybe_save(ctx, force=False)` after every optimizer
step; `finalize(ctx)` at the end. All three are collective: every rank calls them.

Saving writes `${run.dir}/iter_XXXXXXX.tmp-incomplete/` (megatron's torch_dist shards, common.pt,
metadata.json, plus our meta.json and config.yaml), then, after every rank finished, rank 0
renames it to `iter_XXXXXXX/`, replaces the `latest` marker atomically and deletes checkpoints
beyond `checkpoint.keep_last`. A crash at any point leaves `latest` naming a complete
checkpoint. See README.md ("Checkpoints").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pretrain import ckpt_async, ckpt_meta, ckpt_safety, ckpt_state, faults
from pretrain import ckpt_layout as layout
from pretrain.ckpt_meta import CheckpointError

log = logging.getLogger(__name__)

_RESUME_CHOICES = ("auto", "never")


@dataclass
class _Saver:
    """Per-process bookkeeping between saves (not checkpointed)."""

    last_saved_step: int = -1
    last_save_time: float = field(default_factory=time.monotonic)
    queue: Any = None
    pending: list[str] = field(default_factory=list)
    blocking_s: list[float] = field(default_factory=list)


_SAVERS: dict[int, _Saver] = {}


def _saver(ctx: Any) -> _Saver:
    return _SAVERS.setdefault(id(ctx), _Saver())


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def current_layout(ctx: Any) -> dict[str, Any]:
    """The parallel layout this process group runs at (recorded in meta.json)."""
    from megatron.core import parallel_state as ps

    par = ctx.cfg.parallel
    return {
        "world_size": torch.distributed.get_world_size(),
        "tensor_model_parallel_size": ps.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": ps.get_pipeline_model_parallel_world_size(),
        "virtual_pipeline_model_parallel_size": par.virtual_pipeline_model_parallel_size,
        "data_parallel_size": ps.get_data_parallel_world_size(),
        "use_distributed_optimizer": par.use_distributed_optimizer,
        "distrib_optim_sharding_type": ckpt_state.DISTOPT_SHARDING,
    }


def _tokenizer_vocab(ctx: Any) -> int | None:
    return ctx.cfg.model.vocab_size or ckpt_meta.tokenizer_of(ctx.data_manifests).get("vocab_size")


# ---- loading -------------------------------------------------------------------------------


def check_options(cfg: Any) -> None:
    """ConfigError for checkpoint.* values that make no sense (before any training step)."""
    if cfg.resume not in _RESUME_CHOICES:
        raise CheckpointError(f"checkpoint.resume={cfg.resume!r}: choose one of {_RESUME_CHOICES}")
    for key in ("save_interval", "save_interval_minutes", "keep_last"):
        if getattr(cfg, key) < 0:
            raise CheckpointError(
                f"checkpoint.{key}={getattr(cfg, key)} is negative; use 0 to turn it off "
                "(keep_last=0 keeps all checkpoints)"
            )


def choose_checkpoint(ctx: Any) -> tuple[Path | None, bool]:
    """Which checkpoint to start from, and whether to take only its weights.

    A complete checkpoint in this run's own directory always wins (with resume=auto), so a
    preempted and requeued job resumes itself even when its command line has checkpoint.load.
    """
    cfg = ctx.cfg.checkpoint
    check_options(cfg)
    if cfg.resume == "auto":
        own = layout.read_latest(Path(ctx.run_dir))
        if own is not None:
            if cfg.load:
                log.info(
                    "resuming %s; checkpoint.load=%s is ignored (run has its own)", own, cfg.load
                )
            return own, False
    if cfg.load:
        try:
            return layout.resolve_load_path(Path(cfg.load)), bool(cfg.weights_only)
        except FileNotFoundError as exc:
            raise CheckpointError(str(exc)) from exc
    if cfg.weights_only:
        log.warning("checkpoint.weights_only=true has no effect without checkpoint.load")
    return None, False


def load_at_start(ctx: Any) -> None:
    """Restore model/optimizer/scheduler/TrainState/RNG from a checkpoint, if one applies."""
    ckpt_async.prepare_dist_checkpointing()
    saver = _saver(ctx)
    path, weights_only = choose_checkpoint(ctx)
    if path is None:
        log.info("no checkpoint to resume in %s: starting from step 0", ctx.run_dir)
        return
    load_checkpoint(ctx, path, weights_only)
    saver.last_save_time = time.monotonic()
    if path.parent.resolve() == Path(ctx.run_dir).resolve():
        saver.last_saved_step = ctx.state.step  # this run dir already has this step
    if _rank() == 0:
        faults.clear_marker(Path(ctx.run_dir))


def load_checkpoint(ctx: Any, path: Path, weights_only: bool = False) -> dict[str, Any]:
    """Load `path` into the context (collective); returns its meta.json."""
    from megatron.core import dist_checkpointing

    start = time.perf_counter()
    meta = ckpt_meta.read_meta(path)
    ckpt_meta.check_compatible(
        meta, path, ctx.cfg, ctx.data_manifests, _tokenizer_vocab(ctx), weights_only
    )
    ckpt_safety.check_checkpoint_files(path)
    for note in [] if weights_only else ckpt_meta.resume_changes(meta, ctx.cfg):
        log.warning("resuming %s with a changed config: %s", path, note)
    same_layout = _same_layout(meta.get("layout", {}), current_layout(ctx))
    if not weights_only and not same_layout:
        log.warning(
            "checkpoint %s was saved at layout %s, loading at %s: weights and optimizer are "
            "resharded; RNG states are re-seeded (dropout draws differ from an uninterrupted run)",
            path,
            _layout_str(meta.get("layout", {})),
            _layout_str(current_layout(ctx)),
        )
    request = ckpt_state.build_load_request(
        ctx, weights_only, with_rng=same_layout, rng_keys=meta.get("rng_keys")
    )
    loaded = dist_checkpointing.load(request, str(path))
    if not weights_only:
        loaded.setdefault("train_state", meta["train_state"])
    configured = ckpt_meta.schedule_of(ctx.scheduler)
    ckpt_state.apply_loaded(ctx, loaded, weights_only)
    if not weights_only:
        _copy_state(ctx.state, loaded["train_state"])
        restored = ckpt_meta.schedule_of(ctx.scheduler)
        for note in ckpt_meta.schedule_changes(configured, restored):
            log.warning("resuming %s: %s", path, note)
    log.info(
        "loaded %s%s in %.2fs (step %d, %d samples consumed)",
        path,
        " (weights only)" if weights_only else "",
        time.perf_counter() - start,
        ctx.state.step,
        ctx.state.consumed_samples,
    )
    return meta


def _copy_state(state: Any, data: dict[str, Any]) -> None:
    fresh = type(state).from_dict(data)
    for f in fields(fresh):
        setattr(state, f.name, getattr(fresh, f.name))


def _same_layout(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    keys = (
        "world_size",
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "data_parallel_size",
    )
    return all(saved.get(k) == now.get(k) for k in keys)


def _layout_str(lay: dict[str, Any]) -> str:
    return (
        f"TP{lay.get('tensor_model_parallel_size')}xPP{lay.get('pipeline_model_parallel_size')}"
        f"xDP{lay.get('data_parallel_size')}"
    )


# ---- saving --------------------------------------------------------------------------------


def maybe_save(ctx: Any, force: bool = False) -> bool:
    """Save when an interval is due (or `force`); returns True if a save was started."""
    saver = _saver(ctx)
    ckpt_async.finalize_async(saver, blocking=False)
    step, cfg = ctx.state.step, ctx.cfg.checkpoint
    due = force or (cfg.save_interval > 0 and step % cfg.save_interval == 0)
    if not due and cfg.save_interval_minutes > 0:
        elapsed = time.monotonic() - saver.last_save_time
        due = faults.any_rank(elapsed >= cfg.save_interval_minutes * 60.0)
    if not due or step == saver.last_saved_step:
        return False
    save_checkpoint(ctx)
    return True


def finalize(ctx: Any) -> None:
    """Save at the end (checkpoint.save_at_end) and wait for background saves to complete."""
    saver = _saver(ctx)
    if ctx.cfg.checkpoint.save_at_end and ctx.state.step != saver.last_saved_step:
        save_checkpoint(ctx)
    ckpt_async.finalize_async(saver, blocking=True)
    if faults.stopping() and _rank() == 0:
        latest = layout.read_latest(Path(ctx.run_dir))
        marker = faults.write_marker(
            Path(ctx.run_dir), ctx.state.step, str(latest) if latest else None
        )
        log.warning("preempted at step %d: wrote %s", ctx.state.step, marker)
    if saver.blocking_s and ctx.cfg.checkpoint.async_save:
        log.info(
            "async checkpointing blocked training %.3fs in total over %d saves",
            sum(saver.blocking_s),
            len(saver.blocking_s),
        )


def save_checkpoint(ctx: Any) -> Path:
    """Write the checkpoint of the current step (collective). Returns its final directory."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    ckpt_async.prepare_dist_checkpointing()
    saver = _saver(ctx)
    ckpt_async.finalize_async(saver, blocking=True)
    start = time.perf_counter()
    run_dir, step = Path(ctx.run_dir), ctx.state.step
    name = layout.iter_dir_name(step)
    tmp, final = run_dir / (name + layout.TMP_SUFFIX), run_dir / name
    _prepare_tmp(run_dir, tmp)
    state = ckpt_state.build_save_state(ctx)
    use_async = bool(ctx.cfg.checkpoint.async_save)
    request = dist_checkpointing.save(
        state,
        str(tmp),
        sharded_strategy=get_default_save_sharded_strategy("torch_dist"),
        async_sharded_save=use_async,
        preprocess_common_before_consistancy_check=_without_rank_local_fields,
    )
    if _rank() == 0:
        _write_meta_files(ctx, tmp)
    _maybe_crash_for_tests(step)
    keep_last = ctx.cfg.checkpoint.keep_last
    saver.last_saved_step, saver.last_save_time = step, time.monotonic()
    if not use_async:
        _commit(run_dir, tmp, final, keep_last)
        log.info("saved %s in %.2fs", final, time.perf_counter() - start)
        return final
    request.add_finalize_fn(lambda: _commit(run_dir, tmp, final, keep_last))
    ckpt_async.async_queue(saver).schedule_async_request(request)
    saver.pending.append(final.name)
    blocking = time.perf_counter() - start
    saver.blocking_s.append(blocking)
    log.info("async save of %s started; training blocked %.3fs", final, blocking)
    return final


def _prepare_tmp(run_dir: Path, tmp: Path) -> None:
    """Rank 0 creates the temporary directory; every rank raises the same clear error if not."""
    error = None
    if _rank() == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            layout.remove_stale_tmp(run_dir)
            tmp.mkdir(exist_ok=True)
        except OSError as exc:
            error = exc
    if faults.any_rank(error is not None):  # collective: also the barrier before writing
        previous = layout.read_latest(run_dir) if run_dir.is_dir() else None
        raise CheckpointError(
            f"cannot create checkpoint directory {tmp}: {error or 'failed on rank 0'}. "
            "Check that run.dir is writable and its disk has space; the previous checkpoint "
            f"({previous or 'none'}) is kept."
        )


CRASH_ENV = "PRETRAIN_CKPT_CRASH_AT_SAVE"
"""Testing aid: `PRETRAIN_CKPT_CRASH_AT_SAVE=K` SIGKILLs every rank during the save of step K,
after the shards are written and before the checkpoint is committed (the worst moment)."""


def _maybe_crash_for_tests(step: int) -> None:
    if os.environ.get(CRASH_ENV) == str(step):
        import signal

        log.error("%s=%d: killing this process mid-save (testing aid)", CRASH_ENV, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _without_rank_local_fields(common: dict[str, Any]) -> dict[str, Any]:
    # The W&B run id is only known on rank 0 (rank 0's common.pt is the one saved).
    return {k: v for k, v in common.items() if k != "train_state"}


def _write_meta_files(ctx: Any, tmp: Path) -> None:
    meta = ckpt_meta.build_meta(ctx, current_layout(ctx), _tokenizer_vocab(ctx))
    meta["rng_keys"] = sorted(ckpt_state.capture_rng())  # e.g. `cuda` only when saved on GPU
    (tmp / layout.META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:
        import yaml

        text = yaml.safe_dump(meta["config"], sort_keys=False)
    except ImportError:  # pragma: no cover - PyYAML ships with omegaconf
        text = json.dumps(meta["config"], indent=2)
    (tmp / "config.yaml").write_text(text)
    tokenizer = _tokenizer_file(ctx)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, tmp / "tokenizer.model")


def _tokenizer_file(ctx: Any) -> Path | None:
    """The data's SentencePiece model, copied into each checkpoint (makes it self-contained)."""
    if not ctx.data_manifests or not ctx.cfg.data.paths:
        return None
    rel = ctx.data_manifests[0].get("tokenizer", {}).get("path", "tokenizer.model")
    path = Path(ctx.cfg.data.paths[0]) / rel
    return path if path.is_file() else None


def _commit(run_dir: Path, tmp: Path, final: Path, keep_last: int) -> None:
    """After every rank wrote its shards: rename, mark `latest`, rotate (rank 0), then sync."""
    _barrier()
    if _rank() == 0:
        if final.exists():  # re-saving a step (e.g. a run resumed from an older checkpoint)
            trash = final.with_name(final.name + ".replaced" + layout.TMP_SUFFIX)
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        layout.fsync_dir(run_dir)
        layout.write_latest(run_dir, final.name)
        removed = layout.rotate(run_dir, keep_last, protect=final)
        if removed:
            log.info("keep_last=%d: removed %s", keep_last, ", ".join(p.name for p in removed))
    _barrier()
