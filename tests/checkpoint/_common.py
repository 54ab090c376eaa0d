"""Constants and helpers shared by the checkpoint tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests._dist import REPO_ROOT, build_command, read_metrics, small_gpt_overrides

STEPS = 16
"""Length of the reference run."""

COMMON = [
    f"train.max_steps={STEPS}",
    "checkpoint.save_interval=4",
    "checkpoint.keep_last=2",
    "parallel.use_distributed_optimizer=true",
    "logging.wandb.mode=offline",
]
"""Overrides of the reference run (DP=2 on 2 ranks, ZeRO-1, a save every 4 steps)."""

LLAMA = [
    "model.normalization=RMSNorm",
    "model.activation=swiglu",
    "model.position_embedding_type=rope",
    "model.num_query_groups=2",
    "model.add_bias_linear=false",
    "model.share_embeddings_and_output_weights=false",
]
"""The tiny model turned Llama-style (GQA, untied, no biases)."""

RESHARD_STEPS = 6


def train_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl records of completed (not skipped) training steps."""
    return [r for r in read_metrics(run_dir) if "loss" in r and not r.get("skipped")]


def reference_overrides(data: Path, *extra: str) -> list[str]:
    """Overrides of the reference configuration plus `extra`."""
    return [f"data.paths=[{data}]", *COMMON, *extra]


def single_process(
    overrides: list[str], run_dir: Path, *, timeout: float = 300.0, module: str = "pretrain"
) -> subprocess.CompletedProcess:
    """`python -m pretrain ...` in one process without torchrun, whose own exit code is always
    1: this one returns the exit code of the run itself. Quiet defaults as in run_pretrain."""
    command = build_command(1, overrides, run_dir, quiet=True)
    args = command[command.index("pretrain") + 1 :]
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def export_hf(
    checkpoint: Path, output: Path, timeout: float = 300.0
) -> subprocess.CompletedProcess:
    """`python -m pretrain.export_hf checkpoint=... output=... sample_prompt=null`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.export_hf",
            f"checkpoint={checkpoint}",
            f"output={output}",
            "sample_prompt=null",
        ],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def small_overrides(data: Path, steps: int, *extra: str) -> list[str]:
    """The small GPT of `saved_run` (1 process, a save every 2 steps, all kept) plus `extra`."""
    return [
        *small_gpt_overrides(data, steps),
        "checkpoint.save_interval=2",
        "checkpoint.keep_last=0",
        *extra,
    ]
