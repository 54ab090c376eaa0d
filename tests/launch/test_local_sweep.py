"""`hydra/launcher=submitit_local`: a sweep point as its own torchrun on this machine.

One point with two trainer processes (`hydra.launcher.tasks_per_node=2`, DP=2) trains through
the same path as a Slurm sweep (resolved config, `pretrain.launch.node`), and its per-step losses
equal the one-node 2-process torchrun run exactly. A second point with an impossible layout
for 2 processes (`parallel=tp4`) is rejected before anything starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests._dist import QUIET_OVERRIDES, read_metrics
from tests.launch.conftest import multinode_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_submitit_local_point_equals_torchrun(prepared_data, reference_losses, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"sweep.dir={sweep}",
        *(f"{k}={v}" for k, v in QUIET_OVERRIDES.items()),
        *[o for o in multinode_overrides(prepared_data, "single") if not o.startswith("parallel=")],
        "parallel=single,tp4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-4000:]  # the only failure is the tp4 point's config error
    assert "sweep point parallel=tp4: config error: world size 2" in out, out[-3000:]
    assert "2 points: 1 failed, 1 finished" in res.stdout, out[-3000:]
    point = sweep / "parallel=single"
    losses = [r["loss"] for r in read_metrics(point) if "loss" in r]
    assert losses == reference_losses("single")  # bitwise: the same 2-rank DP layout
    assert "world 2 = TP 1 x PP 1 x DP 2" in (point / "pretrain.log").read_text()
    record = json.loads((point / "point.json").read_text())
    assert record["status"] == "finished" and record["job_id"], record
    assert (point / ".launch" / "resolved.yaml").is_file()
    assert not (sweep / "parallel=tp4" / "metrics.jsonl").exists()
