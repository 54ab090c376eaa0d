"""`python -m pretrain` as one plain process (no torchrun), for tests that check its exit code
(torchrun's own exit code is 1 whatever its workers return) and that stderr has no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests._dist import REPO_ROOT, RunResult, build_command, read_metrics


def plain_command(overrides: list[str], run_dir: Path) -> list[str]:
    """The command line of `tests._dist.run_pretrain` (same quiet defaults), without torchrun."""
    command = build_command(1, overrides, run_dir, quiet=True)
    return [sys.executable, *command[command.index("pretrain") - 1 :]]


def pretrain_env() -> dict[str, str]:
    """The environment `tests._dist.run_pretrain` gives its processes."""
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def run_plain(overrides: list[str], run_dir: Path, timeout: float = 300.0) -> RunResult:
    """Run one plain `python -m pretrain` process to its end; never raises on failure."""
    proc = subprocess.run(
        plain_command(overrides, run_dir),
        cwd=REPO_ROOT,
        env=pretrain_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return RunResult(proc.returncode, proc.stdout, proc.stderr, run_dir, read_metrics(run_dir))


def worker_exit_codes(output: str) -> list[int]:
    """The exit codes torchrun's failure summary reports for its workers."""
    return [int(code) for code in re.findall(r"exitcode\s*:\s*(-?\d+)", output)]
