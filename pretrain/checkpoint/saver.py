"""When and where to save, writing a checkpoint, and committing it.

Saving first checks that every weight is finite (`finite`: a diverged model is never saved)
and that the disk can hold another checkpoint, then writes `${run.dir}/iter_XXXXXXX.tmp-incomplete/`
(megatron's torch_dist shards, common.pt, metadata.json, plus our meta.json, config.yaml and
tokenizer.model). After every rank finished, the files are hashed into checksums.json
(`verify`), rank 0 renames the directory to `iter_XXXXXXX/`, replaces the `latest` marker
atomically and deletes checkpoints beyond `checkpoint.keep_last`. A crash at any point leaves
`latest` naming a complete checkpoint (see `layout`); a failed write (a full disk) removes the
torn directory and ends the run with exit 74 (`write_errors`), keeping the previous checkpoint.
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
from pretrain.checkpoint import async_save, finite, layout, meta, state, verify
from pretrain.checkpoint.collective import FAILURES, all_gather
from pretrain.checkpoint.errors import CheckpointError, CheckpointWriteError
from pretrain.checkpoint.write_errors import disk_full, space_problem, write_failed
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
    peft_base: dict[str, str] | None = None
    """LoRA runs: {path, sha256} of the base checkpoint (recorded in meta.json `peft`)."""


def maybe_save(ctx: TrainContext, force: bool = False) -> bool:
    """Save when an interval is due (or `force`); returns True if a save was started."""
    saver = ctx.saver
    finalize_async(ctx, blocking=False)
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
    finalize_async(ctx, blocking=True)
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


def finalize_async(ctx: TrainContext, blocking: bool) -> None:
    """Commit finished background saves; a failed background write ends the run (exit 74)."""
    try:
        async_save.finalize_async(ctx.saver, blocking=blocking)
    except CheckpointWriteError:
        raise
    except FAILURES as exc:
        name = ctx.saver.pending[0] if ctx.saver.pending else "checkpoint"
        tmp = ctx.run_dir / (name + layout.TMP_SUFFIX)
        raise write_failed(ctx.run_dir, tmp, exc, ctx.dist.is_rank0) from exc


def save_checkpoint(ctx: TrainContext) -> Path:
    """Write the checkpoint of the current step (collective). Returns its final directory."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy

    async_save.prepare_dist_checkpointing()
    saver = ctx.saver
    finalize_async(ctx, blocking=True)
    finite.check_weights_finite(ctx)
    start = time.perf_counter()
    run_dir, step = ctx.run_dir, ctx.state.step
    name = layout.iter_dir_name(step)
    tmp, final = run_dir / (name + layout.TMP_SUFFIX), run_dir / name
    prepare_tmp(run_dir, tmp)
    use_async = bool(ctx.cfg.checkpoint.async_save)
    try:
        request = dist_checkpointing.save(
            state.build_save_state(ctx),
            str(tmp),
            sharded_strategy=get_default_save_sharded_strategy("torch_dist"),
            async_sharded_save=use_async,
            preprocess_common_before_consistancy_check=_without_rank_local_fields,
        )
    except FAILURES as exc:
        raise write_failed(run_dir, tmp, exc, ctx.dist.is_rank0) from exc
    _agree_written(run_dir, tmp, _write_meta_files(ctx, tmp) if ctx.dist.is_rank0 else None)
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


def _agree_written(run_dir: Path, tmp: Path, error: OSError | None) -> None:
    """Collective: if a rank failed to write its part of `tmp`, every rank stops (exit 74)."""
    failures = [e for e in all_gather(error and (str(error), error.errno)) if e]
    if failures:
        text, code = failures[0]
        raise write_failed(run_dir, tmp, OSError(code, text), global_rank() == 0)


def prepare_tmp(run_dir: Path, tmp: Path) -> None:
    """Rank 0 creates the temporary directory; every rank raises the same clear error if not.

    Also refuses (exit 74) a save the disk cannot hold (`write_errors.space_problem`).
    """
    problem = None
    if global_rank() == 0:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            layout.remove_stale_tmp(run_dir)
            space = space_problem(run_dir)
            problem = ("full", space) if space else None
            if problem is None:
                tmp.mkdir(exist_ok=True)
        except OSError as exc:
            kind = "full" if disk_full(exc, None) else "mkdir"
            problem = (kind, _mkdir_message(run_dir, tmp, exc))
    problems = [p for p in all_gather(problem) if p]  # collective: the barrier too
    if not problems:
        return
    kind, message = problems[0]
    if kind == "full":
        raise CheckpointWriteError(message).report()
    raise CheckpointError(message)


def _mkdir_message(run_dir: Path, tmp: Path, exc: OSError) -> str:
    previous = layout.read_latest(run_dir) if run_dir.is_dir() else None
    return (
        f"cannot create checkpoint directory {tmp}: {exc}. Check that run.dir is writable and "
        f"its disk has space; the previous checkpoint ({previous or 'none'}) is kept."
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


def _write_meta_files(ctx: TrainContext, tmp: Path) -> OSError | None:
    """Rank 0: meta.json, config.yaml and the tokenizer copy; returns the write error, if any."""
    record = meta.build_training_meta(ctx)
    record["rng_keys"] = sorted(state.capture_rng())  # e.g. `cuda` only when saved on GPU
    try:
        meta.write_meta(tmp, record)
        tokenizer = Path(ctx.tokenizer.path)
        if tokenizer.is_file():  # makes the checkpoint self-contained (export, generate)
            shutil.copyfile(tokenizer, tmp / "tokenizer.model")
    except OSError as exc:
        return exc
    return None


def commit(run_dir: Path, tmp: Path, final: Path, keep_last: int) -> None:
    """After every rank wrote its shards: checksums, rename, mark `latest`, rotate (rank 0).

    Collective. Rotation runs only once the new checkpoint is committed, and never deletes it.
    """
    barrier()
    error = verify.record_checksums(tmp)
    if error is None and global_rank() == 0:
        try:
            _publish(run_dir, tmp, final, keep_last)
        except OSError as exc:
            error = exc
    _agree_written(run_dir, tmp, error)


def _publish(run_dir: Path, tmp: Path, final: Path, keep_last: int) -> None:
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


__all__ = [
    "CRASH_ENV",
    "Saver",
    "commit",
    "finalize",
    "finalize_async",
    "maybe_save",
    "save_checkpoint",
]
