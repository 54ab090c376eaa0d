"""launch/slurm_pretrain.sbatch on one node of the real Slurm test cluster: preemption, requeue,
resume.

The cluster is installed (apt-get, as root) and started by the `slurm_cluster` fixture; if that
fails the tests fail. Set PRETRAIN_SKIP_SLURM_TESTS=1 to skip every test of tests/launch.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tests._dist import QUIET_OVERRIDES, read_metrics, small_gpt_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.slurm]

MAX_STEPS = 40


def _overrides(data_dir: Path, run_dir: Path) -> list[str]:
    quiet = [f"{k}={v}" for k, v in QUIET_OVERRIDES.items()]
    return [*quiet, f"run.dir={run_dir}", *small_gpt_overrides(data_dir, MAX_STEPS)]


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
    env = {"PYTHON": sys.executable, "NPROC_PER_NODE": "2"}
    job_id = slurm_cluster.sbatch(
        "--nodes=1",
        f"--output={log}",
        "launch/slurm_pretrain.sbatch",
        *_overrides(prepared_data, run_dir),
        env=env,
    )

    def steps() -> list[int]:
        return [r["step"] for r in read_metrics(run_dir) if "loss" in r]

    _wait(lambda: len(steps()) >= 3, 120, "3 training steps in metrics.jsonl", slurm_cluster, log)
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    job = slurm_cluster.wait_job(job_id, 150, log)
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", (job, text)
    assert job["NumNodes"] == "1" and job["NodeList"] in slurm_cluster.nodes, job
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
