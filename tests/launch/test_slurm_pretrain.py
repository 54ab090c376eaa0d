"""launch/slurm_pretrain.sbatch on a real one-node Slurm cluster: preemption, requeue, resume.

The cluster is installed (apt-get, as root) and started by the `slurm_cluster` fixture; if that
fails the tests fail. Set PRETRAIN_SKIP_SLURM_TESTS=1 to skip every test of tests/launch.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._dist import QUIET_OVERRIDES, REPO_ROOT, read_metrics, small_gpt_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.slurm]

MAX_STEPS = 40


def _overrides(data_dir: Path, run_dir: Path) -> list[str]:
    quiet = [f"{k}={v}" for k, v in QUIET_OVERRIDES.items()]
    return [*quiet, f"run.dir={run_dir}", *small_gpt_overrides(data_dir, MAX_STEPS)]


def _job(cluster, job_id: str) -> dict[str, str]:
    out = cluster.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait(predicate, timeout: float, what: str, cluster, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    text = log.read_text() if log.exists() else "(no log)"
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}\n{text}\n{cluster.logs()}"
    )


def test_usr1_saves_requeues_and_resumes(slurm_cluster, prepared_data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "slurm.out"
    env = {**slurm_cluster.env, "PYTHON": sys.executable, "NPROC_PER_NODE": "2"}
    res = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", "launch/slurm_pretrain.sbatch"]
        + _overrides(prepared_data, run_dir),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip().split(";")[0]

    def steps() -> list[int]:
        return [r["step"] for r in read_metrics(run_dir) if "loss" in r]

    _wait(lambda: len(steps()) >= 3, 120, "3 training steps in metrics.jsonl", slurm_cluster, log)
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    _wait(
        lambda: _job(slurm_cluster, job_id).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
        150,
        "the requeued job to finish",
        slurm_cluster,
        log,
    )
    job, text = _job(slurm_cluster, job_id), log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", (job, text)
    assert f"requeueing job {job_id}" in text, text
    # trainers saved on SIGUSR1 and `python -m pretrain.faults` found the PREEMPTED marker
    assert "preemption signal SIGUSR1 received" in text, text
    assert '"signal": "SIGUSR1", "exit_code": 75' in text, text
    # the first run stopped early at a step boundary; the second loaded that checkpoint
    preempted = re.search(r"loaded \S*iter_(\d+)", text)
    assert preempted, text
    saved_step = int(preempted.group(1))
    assert 3 <= saved_step < MAX_STEPS, text
    done = steps()
    assert done[-1] == MAX_STEPS and sorted(set(done)) == list(range(1, MAX_STEPS + 1)), done
    assert not (run_dir / "PREEMPTED").exists()  # cleared by the resumed run
