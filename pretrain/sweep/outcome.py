"""The end of a sweep: one line per point that did not finish, a count, the exit code."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR


@dataclass
class PointOutcome:
    """How one point of this invocation ended."""

    point: str
    run_dir: str
    status: str
    """finished | skipped (finished before) | failed | preempted | queued."""
    exit_code: int = 0
    error: str = ""
    sweep_dir: str = ""


def sweep_exit_code(outcomes: list[PointOutcome]) -> int:
    """0 when no point failed; 2 when every failure was a config error; else 1."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return 0
    return EXIT_CONFIG_ERROR if all(o.exit_code == EXIT_CONFIG_ERROR for o in failed) else 1


def summarize(outcomes: list[PointOutcome], sweep_dir: str, out: TextIO | None = None) -> int:
    """Print the sweep's summary; returns `sweep_exit_code`."""
    out = out or sys.stdout
    if not outcomes:
        return 0
    counts = Counter(o.status for o in outcomes)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"sweep {sweep_dir}: {len(outcomes)} points: {parts}", file=out)
    for o in outcomes:
        if o.status in ("failed", "preempted"):
            print(f"  {o.status} (exit {o.exit_code}) {o.point}: {o.error}", file=out)
    print(f"table and loss curves: python -m pretrain.sweep_report {sweep_dir}", file=out)
    out.flush()
    return sweep_exit_code(outcomes)
