"""A `hydra/launcher=submitit_slurm` sweep on the real two-node Slurm test cluster.

One sweep of three learning rates: two good points run as two Slurm jobs at once (one per
node); the third (`optim.lr=-1`) is rejected on the submitting host and fails alone. Point
`optim.lr=0.003` gets submitit's preemption signal mid-run (`scancel --signal=USR2`): its
trainers save, submitit requeues the job, and the requeued job continues exactly — its
per-step losses equal an uninterrupted run of the same config. Then the sweep report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._dist import QUIET_OVERRIDES, REPO_ROOT, read_metrics, run_pretrain, small_gpt_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.slurm]

STEPS = 40
PREEMPTED_LR, OTHER_LR = "0.003", "0.001"


def _last_per_step(run_dir: Path) -> dict[int, float]:
    """{step: loss} keeping the last row of each step (a resumed job re-logs nothing twice,
    but a row logged just before the save may be logged again after the resume)."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def _wait_for(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}\n{log.read_text()[-4000:]}"
    )


def _point(sweep: Path, lr: str) -> Path:
    return sweep / f"optim.lr={lr}"


def test_slurm_sweep_requeue_and_a_bad_point(slurm_cluster, prepared_data, tmp_path):
    model = small_gpt_overrides(prepared_data, STEPS)
    quiet = [f"{k}={v}" for k, v in QUIET_OVERRIDES.items()]
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.timeout_min=15",
        f"sweep.dir={sweep}",
        *quiet,
        *model,
        f"optim.lr={PREEMPTED_LR},{OTHER_LR},-1",
    ]
    env = {**slurm_cluster.env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        target = _point(sweep, PREEMPTED_LR)
        _wait_for(lambda: len(_last_per_step(target)) >= 3, 240, "3 steps of the point", log)
        job_id = json.loads((target / "point.json").read_text())["job_id"]
        slurm_cluster.run("scancel", "--signal=USR2", job_id)
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    # the bad point is the only failure, a config error found before anything was queued
    assert proc.returncode == 2, text[-4000:]
    assert "sweep point optim.lr=-1: config error: optim.lr=-1.0 must be > 0 (not queued)" in text
    assert "3 points: 1 failed, 2 finished" in text, text[-3000:]
    bad = json.loads((_point(sweep, "-1") / "point.json").read_text())
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and bad["job_id"] is None, bad

    # the preempted point was requeued once and continued exactly
    record = json.loads((target / "point.json").read_text())
    assert record["status"] == "finished", record
    job = slurm_cluster.job(record["job_id"])
    assert job.get("Restarts") == "1", job
    assert not (target / "PREEMPTED").exists()  # cleared by the resumed job
    resumed = [ln for ln in (target / "pretrain.log").read_text().splitlines() if "loaded" in ln]
    assert resumed, "the requeued job did not load a checkpoint"
    reference = run_pretrain(1, [*model, f"optim.lr={PREEMPTED_LR}"], tmp_path / "reference")
    expected = {r["step"]: r["loss"] for r in reference.records if "loss" in r}
    assert _last_per_step(target) == expected  # bitwise: same layout, fp32 on CPU
    other = _last_per_step(_point(sweep, OTHER_LR))
    assert sorted(other) == list(range(1, STEPS + 1)) and other != expected

    report = subprocess.run(
        [sys.executable, "-m", "pretrain.sweep_report", str(sweep), "--json"],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout.strip().splitlines()[-1])
    status = {p["point"]: p["status"] for p in summary["points"]}
    assert status == {
        f"optim.lr={PREEMPTED_LR}": "finished",
        f"optim.lr={OTHER_LR}": "finished",
        "optim.lr=-1": "failed",
    }, summary
    assert summary["best"] in (f"optim.lr={PREEMPTED_LR}", f"optim.lr={OTHER_LR}")
    assert Path(summary["png"]).is_file()


def test_sbatch_wrapper_validates_before_queueing(slurm_cluster, prepared_data, tmp_path):
    before = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    res = subprocess.run(
        ["launch/sbatch_pretrain.sh", "--nodes=2", "--", f"data.paths=[{prepared_data}]"]
        + ["parallel=tp4", f"run.dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT,
        env={**slurm_cluster.env, "PYTHON": sys.executable, "NPROC_PER_NODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "world size 2" in res.stderr and "tensor_model_parallel_size=4" in res.stderr
    assert slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split() == before
    assert not (tmp_path / "run").exists()
