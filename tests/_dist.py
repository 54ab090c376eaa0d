"""Launch real `torchrun ... -m pretrain` runs from tests and read back their metrics.

Shared by tests/pretrain and tests/checkpoint. Each run is a real set of gloo processes on the
CPU (`python -m torch.distributed.run --standalone --nproc-per-node N -m pretrain ...`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

QUIET_OVERRIDES = {
    "logging.wandb.mode": "disabled",
    "logging.report": "false",
    "sample.enabled": "false",
    "checkpoint.save_at_end": "false",
    "eval.interval": "0",
    "eval.iters": "0",
}
"""Defaults that keep test runs fast; any key given by the caller wins."""


def small_gpt_overrides(
    data_dir: str | Path, steps: int, *, hidden: int = 64, micro_batch_size: int = 4
) -> list[str]:
    """The small 2-layer GPT most distributed tests train (global batch 8, warmup 1 step)."""
    return [
        f"data.paths=[{data_dir}]",
        f"train.max_steps={steps}",
        f"train.micro_batch_size={micro_batch_size}",
        "train.global_batch_size=8",
        "model.num_layers=2",
        f"model.hidden_size={hidden}",
        f"model.ffn_hidden_size={4 * hidden}",
        "optim.warmup_steps=1",
    ]


@dataclass
class RunResult:
    """Outcome of one launched run."""

    returncode: int
    stdout: str
    stderr: str
    run_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def output(self) -> str:
        """stdout + stderr of all ranks (rank 0 logs to stdout via Hydra's console handler)."""
        return self.stdout + "\n" + self.stderr

    def losses(self) -> list[float]:
        """Per-step training losses (records that have a `loss`)."""
        return [r["loss"] for r in self.records if "loss" in r]

    def by_step(self, key: str) -> dict[int, Any]:
        """{step: record[key]} for records having `key`."""
        return {r["step"]: r[key] for r in self.records if key in r}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All JSON records of RUN_DIR/metrics.jsonl, in file order ([] if missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def build_command(nproc: int, overrides: list[str], run_dir: Path, quiet: bool) -> list[str]:
    """The torchrun command line (merged overrides: caller's keys replace the quiet defaults)."""
    merged: dict[str, str] = dict(QUIET_OVERRIDES) if quiet else {}
    merged["run.dir"] = "'" + str(run_dir) + "'"  # quoted: paths may contain = or ,
    for override in overrides:
        key, value = _split(override)
        merged[key] = value
    args = [f"{k}={v}" if v != "" or "=" in k else k for k, v in merged.items()]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pretrain",
        *args,
    ]


def run_pretrain(
    nproc: int,
    overrides: list[str],
    run_dir: str | Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300.0,
    check: bool = True,
    quiet: bool = True,
) -> RunResult:
    """Run `torchrun --nproc-per-node nproc -m pretrain overrides` in the repo root.

    `run_dir` becomes `run.dir`. With `check`, a non-zero exit raises AssertionError showing the
    tail of stderr. Returns the exit code, output and the metrics.jsonl records.
    """
    run_dir = Path(run_dir)
    full_env = dict(os.environ)
    full_env.update(
        {
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": full_env.get("WANDB_MODE", "offline"),
            "WANDB_SILENT": "true",
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", ""),
        }
    )
    full_env.update(env or {})
    proc = subprocess.run(
        build_command(nproc, overrides, run_dir, quiet),
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"pretrain run failed (exit {proc.returncode}) with {overrides}:\n{proc.stderr[-4000:]}"
        )
    return RunResult(proc.returncode, proc.stdout, proc.stderr, run_dir, read_metrics(run_dir))
