"""Shared checkpoint-test runs (each launched once per session, reused by several tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._dist import run_pretrain
from tests.checkpoint._common import LLAMA, RESHARD_STEPS, reference_overrides, small_overrides


@pytest.fixture(scope="session")
def reference_run(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Uninterrupted DP=2 distributed-optimizer run of STEPS steps (GPT-2-style tiny model)."""
    run_dir = tmp_path_factory.mktemp("reference")
    secrets = {"WANDB_API_KEY": "wandb-secret-0123456789", "MY_SERVICE_TOKEN": "tok-secret-98765"}
    run_pretrain(2, reference_overrides(prepared_data), run_dir, env=secrets)
    return run_dir


@pytest.fixture(scope="session")
def tp2pp2_run(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-style run at TP2 x PP2 x VPP2 (4 ranks, 2 model chunks each), saves every 3 steps."""
    run_dir = tmp_path_factory.mktemp("tp2pp2")
    overrides = [
        f"data.paths=[{prepared_data}]",
        f"train.max_steps={RESHARD_STEPS}",
        "checkpoint.save_interval=3",
        "checkpoint.keep_last=0",
        "parallel.tensor_model_parallel_size=2",
        "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2",
        "parallel.use_distributed_optimizer=true",
        *LLAMA,
    ]
    run_pretrain(4, overrides, run_dir, timeout=400)
    return run_dir


@pytest.fixture(scope="session")
def saved_run(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, the small GPT, 6 steps: iter_0000002/4/6 (+ `latest`). Copy before editing."""
    run_dir = tmp_path_factory.mktemp("saved") / "run"
    run_pretrain(1, small_overrides(prepared_data, 6), run_dir)
    return run_dir
