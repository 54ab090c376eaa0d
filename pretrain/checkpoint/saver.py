"""When and where to save, writing a checkpoint, and committing it.

Saving writes `${run.dir}/iter_XXXXXXX.tmp-incomplete/` (megatron's torch_dist shards, common.pt,
metadata.json, plus our meta.json, config.yaml and tokenizer.model), then, after every rank
finished, rank 0 renames it to `iter_XXXXXXX/`, replaces the `latest` marker atomically and
deletes checkpoints beyond `checkpoint.keep_last`. A crash at any point leaves `latest` naming
a complete checkpoint (see `layout`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain import faults
from pretrain.checkpoint import async_save, layout, meta, state
from pretrain.checkpoint.meta import CheckpointError
from pretrain.parallel import barrier, global_rank

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger("pretrain.checkpoint")

CRASH_ENV = "PRETRAIN_CKPT_CRASH_AT_SAVE"
"""Testing aid: `PRETRAIN_CKPT_CRASH_AT_SAVE=K` SIGKILLs every rank during the save of step K,
after the shards are written and before the checkpoint is committed (the worst moment)."""


@dataclass
class Saver:
    """Per-process bookkeeping between saves (held by the TrainContext; not checkpointed)."""

    last_saved_step: int = -1
    """Step of the newest checkpoint this run dir has (-1 = none yet)."""
    last_save_time: float = field(default_factory=time.monotonic)
    """time.monotonic() of the last save (for checkpoint.save_interval_minutes)."""
    queue: Any = None
    """megatron AsyncCallsQueue of background saves (created on the first async save)."""
    pending: list[str] = field(default_factory=list)
    """Names of async saves started but not yet committed, oldest first."""
    blocking_s: list[float] = field(default_factory=list)
    """Seconds each async save blocked training."""


def maybe_save(ctx: TrainContext, force: bool = False) -> bool:
    """Save when an interval is due (or `force`); returns True if a save was started."""
    saver = ctx.saver
    async_save.finalize_async(saver, blocking=False)
    step, cfg = ctx.state.step, ctx.cfg.checkpoint
    due = force or (cfg.save_interval > 0 and step % cfg.save_interval == 0)
    if not due and cfg.save_interval_minutes > 0:
        elapsed = time.monotonic() - saver.last_save_time
        due = faults.any_rank(elapsed >= cfg.save_interval_minutes * 60.0)
    if not due or step == saver.last_saved_step:
        return False
    save_checkpoint(ctx)
    return True


def finalize(ctx: TrainContext) -> None:
    """Save at the end (checkpoint.save_at_end) and wait for background saves to complete."""
    saver = ctx.saver
    if ctx.cfg.checkpoint.save_at_end and ctx.state.step != saver.last_saved_step:
        save_checkpoint(ctx)
    async_save.finalize_async(saver, blocking=True)
    if faults.stopping() and ctx.dist.is_rank0:
        latest = layout.read_latest(ctx.run_dir)
        marker = faults.write_marker(ctx.run_dir, ctx.state.step, str(latest) if latest else None)
        log.warning("preempted at step %d: wrote %s", ctx.state.step, marker)
    if saver.blocking_s and ctx.cfg.checkpoint.async_save:
        log.info(
            "async checkpointing blocked training %.3fs in total over %d saves",
            sum(saver.blocking_s),
            len(saver.blocking_s),
        )


def save_checkpoint(ctx: TrainContext) -> Path:
    """Write the checkpoint of the current step (collective). Returns its final directory."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    async_save.prepare_dist_checkpointing()
    saver = ctx.saver
    async_save.finalize_async(saver, blocking=True)
    start = time.perf_counter()
    run_dir, step = ctx.run_dir, ctx.state.step
    name = layout.iter_dir_name(step)
    tmp, final = run_dir / (name + layout.TMP_SUFFIX), run_dir / name
    prepare_tmp(run_dir, tmp)
    use_async = bool(ctx.cfg.checkpoint.async_save)
    request = dist_checkpointing.save(
        state.build_save_state(ctx),
        str(tmp),
        sharded_strategy=get_default_save_sharded_strategy("torch_dist"),
        async_sharded_save=use_async,
        preprocess_common_before_consistancy_check=_without_rank_local_fields,
    )
    if ctx.dist.is_rank0:
        _write_meta_files(ctx, tmp)
    _maybe_crash_for_tests(step)
    keep_last = ctx.cfg.checkpoint.keep_last
    saver.last_saved_step, saver.last_save_time = step, time.monotonic()
    if not use_async:
        commit(run_dir, tmp, final, keep_last)
        log.info("saved %s in %.2fs", final, time.perf_counter() - start)
        return final
    request.add_finalize_fn(lambda: commit(run_dir, tmp, final, keep_last))
    async_save.async_queue(saver).schedule_async_request(request)
    saver.pending.append(final.name)
    blocking = time.perf_counter() - start
    saver.blocking_s.append(blocking)
    log.info("async save of %s started; training blocked %.3fs", final, blocking)
    return final


def prepare_tmp(run_dir: Path, tmp: Path) -> None:
    """Rank 0 creates the temporary directory; every rank raises the same clear error if not."""
    error = None
    if global_rank() == 0:
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


def _maybe_crash_for_tests(step: int) -> None:
    if os.environ.get(CRASH_ENV) == str(step):
        import signal

        log.error("%s=%d: killing this process mid-save (testing aid)", CRASH_ENV, step)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _without_rank_local_fields(common: dict[str, Any]) -> dict[str, Any]:
    # The W&B run id is only known on rank 0 (rank 0's common.pt is the one saved).
    return {k: v for k, v in common.items() if k != "train_state"}


def _write_meta_files(ctx: TrainContext, tmp: Path) -> None:
    record = meta.build_training_meta(ctx)
    record["rng_keys"] = sorted(state.capture_rng())  # e.g. `cuda` only when saved on GPU
    meta.write_meta(tmp, record)
    tokenizer = Path(ctx.tokenizer.path)
    if tokenizer.is_file():  # makes the checkpoint self-contained (export, generate)
        shutil.copyfile(tokenizer, tmp / "tokenizer.model")


def commit(run_dir: Path, tmp: Path, final: Path, keep_last: int) -> None:
    """After every rank wrote its shards: rename, mark `latest`, rotate (rank 0), then sync."""
    barrier()
    if global_rank() == 0:
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
    barrier()


__all__ = ["CRASH_ENV", "Saver", "commit", "finalize", "maybe_save", "save_checkpoint"]
