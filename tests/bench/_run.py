"""Run a benchmark script as a user would (a subprocess) and read its `BENCH_JSON ` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUIET_ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


def run_bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python bench/<script> args...` from the repo root, output captured."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        cwd=REPO,
        env={**os.environ, **QUIET_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bench_json(stdout: str) -> dict:
    """The one `BENCH_JSON {...}` record a benchmark prints."""
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH_JSON ")]
    assert len(lines) == 1, stdout[-3000:]
    return json.loads(lines[0].removeprefix("BENCH_JSON "))
