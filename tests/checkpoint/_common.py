"""Constants and helpers shared by the checkpoint tests."""

from __future__ import annotations

from pathlib import Path

from tests._dist import read_metrics

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
