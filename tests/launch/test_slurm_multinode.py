"""`sbatch --nodes=2` of launch/slurm_pretrain.sbatch on the two-node test cluster.

One torchrun per node (NPROC_PER_NODE=1, c10d rendezvous on the first node) gives DP=2 across
the nodes n1 and n2; it must train exactly as the one-node 2-process run (`reference_losses`).
The cluster is installed (apt-get, as root) and started by the `slurm_cluster` fixture; if that
fails the tests fail. Set PRETRAIN_SKIP_SLURM_TESTS=1 to skip every test of tests/launch.
"""

from __future__ import annotations

import re
import socket
import sys

import pytest

from tests._dist import QUIET_OVERRIDES, read_metrics
from tests.launch.conftest import MULTINODE_STEPS, multinode_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.slurm]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def test_sbatch_two_nodes_equals_one_node_run(
    slurm_cluster, prepared_data, reference_losses, tmp_path
):
    run_dir, log = tmp_path / "run", tmp_path / "slurm.out"
    quiet = [f"{k}={v}" for k, v in QUIET_OVERRIDES.items()]
    overrides = [*quiet, f"run.dir={run_dir}", *multinode_overrides(prepared_data, "single")]
    # a free rendezvous port: the script's default (29500 + job id % 1000) repeats across
    # test sessions that run at the same time, each with its own cluster counting from job 1
    env = {"PYTHON": sys.executable, "NPROC_PER_NODE": "1", "MASTER_PORT": str(_free_port())}
    job_id = slurm_cluster.sbatch(
        "--nodes=2",
        "--ntasks-per-node=1",
        f"--output={log}",
        "launch/slurm_pretrain.sbatch",
        *overrides,
        env=env,
    )
    job = slurm_cluster.wait_job(job_id, 240, log)
    text = log.read_text() if log.exists() else "(no output file)"
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (job, text)
    assert job["NodeList"] == "n[1-2]" and job["NumNodes"] == "2", job
    assert re.search(r"\b2 node\(s\) x 1 process", text), text
    assert "world 2 = TP 1 x PP 1 x DP 2" in text, text

    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert len(losses) == MULTINODE_STEPS, text
    # bitwise: the same DP=2 gloo all-reduce over the same 2 ranks, only the transport differs
    assert losses == reference_losses("single")
