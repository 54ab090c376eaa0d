"""Strict configs on both command lines: unknown keys (also `+key=`) and Hydra errors exit 2,
`--help` shows only the training job, and a rejected launch writes nothing into run.dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import PretrainConfig
from pretrain_pipeline_conf.hydra_app import (
    field_docs,
    nearest,
    override_key_problems,
    unknown_keys,
)


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["+train.max_step=5"], "unknown key 'train.max_step'; did you mean train.max_steps?"),
        (["train.max_stepz=5"], "did you mean train.max_steps?"),
        (["+trian.max_steps=5"], "unknown key 'trian.max_steps'; did you mean train.max_steps?"),
        (["optim.lr=abc"], "Value 'abc' of type 'str' could not be converted to Float"),
        (["model=nope"], "Could not find 'model/nope'"),
    ],
)
def test_pretrain_config_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    run_dir = tmp_path / "run"
    result = _cli("pretrain", *args, f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


def test_rejected_launch_keeps_the_recorded_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    recorded = run_dir / ".hydra" / "config.yaml"
    recorded.write_text("the config of the earlier run\n")
    result = _cli("pretrain", "data.paths=[nowhere]", f"run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2 and "no manifest.json" in result.stderr, result.stderr
    assert recorded.read_text() == "the config of the earlier run\n"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra"]  # no log file either


def test_data_pipeline_rejects_added_unknown_keys(tmp_path: Path) -> None:
    result = _cli("data_pipeline", "+input.textkey=x", f"output.dir={tmp_path}/o", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown key 'input.textkey'; did you mean input.text_key?" in result.stderr
    assert not (tmp_path / "o").exists()


def test_pretrain_help_lists_training_groups_and_key_docs(tmp_path: Path) -> None:
    result = _cli("pretrain", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "parallel: dp_zero1, pp2, pp2_vpp2, single, tp2" in out
    assert "train.max_steps=" in out and "Optimizer steps to train." in out
    assert "input:" not in out and "tokenizer:" not in out and "base_" not in out


def test_schema_helpers() -> None:
    docs = field_docs(PretrainConfig)
    assert docs["seed"] == "Seed of model init, dropout and the data order."
    assert nearest("train.max_step", ["train.max_steps", "train.seq_length"]).endswith(
        "train.max_steps?"
    )
    assert nearest("zzz", ["train.max_steps"]) == ""
    from omegaconf import OmegaConf

    composed = OmegaConf.create({"train": {"max_steps": 1, "max_step": 2}, "seed": 1, "x": 0})
    assert unknown_keys(composed, PretrainConfig) == [
        "unknown key 'train.max_step'; did you mean train.max_steps?",
        "unknown key 'x'",
    ]
    args = ["model=tiny", "hydra.run.dir=.", "hydra/launcher=basic", "data.paths=[a]", "--cfg"]
    assert override_key_problems(args, PretrainConfig, skip=("hydra",)) == []
    assert override_key_problems(["~optim.lrr"], PretrainConfig, skip=()) == [
        "unknown key 'optim.lrr'; did you mean optim.lr?"
    ]
