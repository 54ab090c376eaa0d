"""Sweep points under Hydra's basic launcher: one process trains the points one by one.

Each point: skipped with a line when it finished before; otherwise its `point.json` says
running, then finished / failed / preempted. A failed point is recorded and the sweep goes on
with the next; a preempted or interrupted point (exit 75 / 130) stops the sweep, so that a
re-run resumes it. Several ranks per point need a launcher that starts them
(`hydra/launcher=submitit_local`), so a sweep under torchrun is refused.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from pretrain.config import ConfigError
from pretrain.faults import EXIT_PREEMPTED
from pretrain.parallel import world_size_from_env
from pretrain.sweep.outcome import PointOutcome
from pretrain.sweep.plan import SweepPoint
from pretrain.sweep.points import (
    PointRecord,
    is_finished,
    point_status,
    short_error,
    write_point,
)
from pretrain_pipeline_conf.hydra_app import TaskExit

log = logging.getLogger("pretrain.sweep")

EXIT_INTERRUPTED = 130
STOPS_SWEEP = (EXIT_PREEMPTED, EXIT_INTERRUPTED)


def check_single_process() -> None:
    """A basic-launcher sweep trains in this one process: refuse it under torchrun."""
    if world_size_from_env() > 1:
        raise ConfigError(
            "a sweep (-m) under torchrun would run every point on every rank: run `python -m "
            "pretrain -m ...` without torchrun and add hydra/launcher=submitit_local "
            "hydra.launcher.tasks_per_node=N (N processes per point; docs/sweeps.md)"
        )


def _code_of(exc: SystemExit) -> int:
    code = exc.code
    return code if isinstance(code, int) else (0 if code is None else 1)


def run_local_point(
    point: SweepPoint, max_steps: int | None, train: Callable[[], None], to_the_end: bool = True
) -> PointOutcome:
    """Train one point in this process (or skip it); returns its outcome.

    `to_the_end` is False when train.stop_at_step ends the run before max_steps: a point that
    exits 0 is then `stopped`, not `finished` (a re-run continues it).
    """
    if max_steps is not None and is_finished(point.run_dir, max_steps):
        log.warning(
            "sweep point %s finished before (%d steps in %s): skipped",
            point.name,
            max_steps,
            point.run_dir,
        )
        return PointOutcome(point.name, point.run_dir, "skipped", sweep_dir=point.sweep_dir)
    record = PointRecord(point.name, "running", point.overrides, max_steps)
    write_point(point.run_dir, record)
    code, error = 0, ""
    try:
        train()
    except SystemExit as exc:
        code, error = _code_of(exc), getattr(exc, "message", "") or f"exit {_code_of(exc)}"
    except Exception as exc:  # noqa: BLE001 - one point's failure is recorded, the sweep goes on
        traceback.print_exc()
        code, error = 1, short_error(f"{type(exc).__name__}: {exc}")
    status = point_status(code, to_the_end)
    record.status, record.exit_code, record.error = status, code, error or None
    write_point(point.run_dir, record)
    if status in ("failed", "preempted"):
        log.error("sweep point %s %s (exit %d): %s", point.name, status, code, error)
    if code in STOPS_SWEEP:
        raise TaskExit(code, f"sweep stopped at point {point.name} (exit {code}); rerun to resume")
    return PointOutcome(point.name, point.run_dir, status, code, error, point.sweep_dir)
