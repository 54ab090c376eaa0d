"""Hydra multirun sweeps with the basic launcher (`python -m pretrain -m ...`), point names,
and the resolved-config entry (`python -m pretrain --resolved-config FILE`).

The regression this guards: every sweep job used to share one run.dir, so the second point
resumed the first one's finished checkpoint and trained zero steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.sweep.points import NO_SWEPT_KEYS, point_name, swept_keys, user_run_dir
from tests._dist import QUIET_OVERRIDES, REPO_ROOT, read_metrics

STEPS = 4
LRS = ("0.001", "0.003")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _sweep(tmp_path: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    quiet = [f"{k}={v}" for k, v in QUIET_OVERRIDES.items()]
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "-m",
        f"sweep.dir={tmp_path / 'sweep'}",
        f"data.paths=[{data_dir}]",
        f"train.max_steps={STEPS}",
        "train.global_batch_size=8",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        *quiet,
        *extra,
    ]
    return subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )


def _point_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "point.json").read_text())


@pytest.mark.slow
def test_local_multirun_trains_every_point_in_its_own_dir(prepared_data, tmp_path):
    lrs = f"optim.lr={','.join(LRS)},-1"  # the last point has a bad config: it fails alone
    res = _sweep(tmp_path, prepared_data, lrs, "optim.warmup_steps=1")
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-4000:]  # every failed point failed with a config error
    sweep = tmp_path / "sweep"
    losses = {}
    for lr in LRS:
        run_dir = sweep / f"optim.lr={lr}"
        steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
        assert steps == list(range(1, STEPS + 1)), (lr, steps, out[-3000:])
        losses[lr] = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
        record = _point_json(run_dir)
        assert record["status"] == "finished" and record["max_steps"] == STEPS, record
        assert (run_dir / ".hydra" / "config.yaml").exists()
        assert f"optim.lr={lr}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    # each point started from step 0 with its own learning rate (none resumed a sibling)
    assert out.count("no checkpoint to resume") == 2, out[-3000:]
    assert losses[LRS[0]][0] == losses[LRS[1]][0]  # same init and data at step 1
    assert losses[LRS[0]][-1] != losses[LRS[1]][-1]
    bad = _point_json(sweep / "optim.lr=-1")
    assert bad["status"] == "failed" and bad["exit_code"] == 2, bad
    assert "optim.lr" in bad["error"] and "> 0" in bad["error"], bad
    assert "3 points: 1 failed, 2 finished" in res.stdout, res.stdout
    assert "failed (exit 2) optim.lr=-1" in res.stdout
    # nothing of Hydra's own outside the sweep dir (no ./multirun, no outputs/)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]

    again = _sweep(tmp_path, prepared_data, f"optim.lr={','.join(LRS)}", "optim.warmup_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    text = again.stdout + again.stderr
    for lr in LRS:
        assert f"sweep point optim.lr={lr} finished before" in text, text[-3000:]
        assert len(read_metrics(sweep / f"optim.lr={lr}")) == STEPS  # nothing appended
    assert "2 points: 2 skipped" in again.stdout


def test_fixed_run_dir_in_a_sweep_is_refused(prepared_data, tmp_path):
    res = _sweep(tmp_path, prepared_data, "optim.lr=0.001,0.002", f"run.dir={tmp_path / 'one'}")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "is the same for every sweep point" in res.stderr
    assert not (tmp_path / "one").exists()


def test_swept_keys_and_point_names():
    cli = ["optim.lr=1e-3,3e-3", "model=tiny", "data.paths=[/a/b]", "-m", "hydra.verbose=true"]
    assert swept_keys(cli, None) == ["optim.lr"]
    assert swept_keys(["model=tiny"], {"parallel": "single,tp2"}) == ["parallel"]
    assert swept_keys(["train.max_steps=range(10,30,10)", "seed=glob(*)"], None) == [
        "seed",
        "train.max_steps",
    ]
    job = ["optim.lr=0.001", "model=gpt2-125m", "data.paths=[/a/b]"]
    assert point_name(job, ["optim.lr", "model"]) == "model=gpt2-125m,optim.lr=0.001"
    assert point_name(["data.paths=[/a/b c]"], ["data.paths"]) == "data.paths=__a_b_c_"
    assert point_name(job, []) == NO_SWEPT_KEYS
    long = point_name([f"data.paths=[{'x' * 400}]"], ["data.paths"])
    assert len(long) <= 150 and long != point_name([f"data.paths=[{'y' * 400}]"], ["data.paths"])
    assert user_run_dir(["run.dir='/x/y'", "a=1"]) == "/x/y"


def test_resolved_config_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: pretrain-resolved-config/1\nconfig:\n  optim:\n    lrr: 1\n")
    for path, message in (
        (tmp_path / "missing.yaml", "no such file"),
        (bad, "unknown key 'optim.lrr'"),
    ):
        res = subprocess.run(
            [sys.executable, "-m", "pretrain", "--resolved-config", str(path)],
            cwd=REPO_ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2, res.stderr
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_resolve_validates_for_the_world_size(prepared_data, tmp_path, capsys):
    from pretrain.launch.resolve import main
    from pretrain.launch.resolved import read_resolved

    args = [f"data.paths=[{prepared_data}]", "parallel=tp2", f"run.dir={tmp_path / 'run'}"]
    assert main(["--world-size", "3", "--check", *args]) == 2
    assert "world size 3" in capsys.readouterr().err
    assert main(["--world-size", "4", "--out", str(tmp_path / "r.yaml"), *args]) == 0
    run_dir, path = capsys.readouterr().out.split()
    assert run_dir == str(tmp_path / "run") and path == str(tmp_path / "r.yaml")
    config, overrides = read_resolved(path)
    assert config["parallel"]["tensor_model_parallel_size"] == 2 and overrides == args
    assert "hydra" not in config and config["run"]["dir"] == run_dir


def test_a_sweep_under_torchrun_is_refused(monkeypatch):
    from pretrain.config import ConfigError
    from pretrain.sweep.local import check_single_process

    monkeypatch.setenv("WORLD_SIZE", "1")
    check_single_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="submitit_local"):
        check_single_process()
