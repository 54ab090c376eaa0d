"""launch/prepare_slurm.sh on the real two-node Slurm test cluster (tests/launch/conftest.py).

The cluster is installed (apt-get, as root) and started by the `slurm_cluster` fixture; if that
fails the tests fail. Set PRETRAIN_SKIP_SLURM_TESTS=1 to skip every test of tests/launch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, stdlib_sample_files

pytestmark = [pytest.mark.distributed, pytest.mark.slurm]


def _overrides(out_dir: Path) -> list[str]:
    files = stdlib_sample_files(120_000)
    return [
        "input=files",
        "input.paths=[" + ",".join(files) + "]",
        "input.format=text",
        "tokenizer.vocab_size=400",
        "output.num_shards=4",
        "workers=1",
        f"output.dir={out_dir}",
    ]


def _wait_file(path: Path, timeout: float, cluster, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.5)
    queue = cluster.run("squeue", "-a", check=False).stdout
    texts = "\n".join(f"--- {p}\n{p.read_text()}" for p in sorted(logs.glob("*.out")))
    raise AssertionError(
        f"{path} not written after {timeout} s\n{queue}\n{texts}\n{cluster.logs()}"
    )


def test_prepare_slurm_array_equals_single_run(slurm_cluster, tmp_path):
    logs = tmp_path / "logs"
    env = {
        **slurm_cluster.env,
        "PYTHON": sys.executable,
        "CPUS_PER_TASK": "1",
        "SLURM_LOG_DIR": str(logs),
    }
    res = subprocess.run(
        ["bash", "launch/prepare_slurm.sh", "2", *_overrides(tmp_path / "array")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "submitted array job" in res.stdout and "(2 tasks) and finalize job" in res.stdout
    single = subprocess.run(
        [sys.executable, "-m", "data_pipeline", *_overrides(tmp_path / "single")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stdout + single.stderr
    _wait_file(tmp_path / "array" / "manifest.json", 90, slurm_cluster, logs)

    # both array tasks and the finalize job logged into SLURM_LOG_DIR, none into checkpoints/
    names = sorted(p.name for p in logs.glob("*.out"))
    assert len(names) == 3, names
    assert sum(n.startswith("slurm-prepare-finalize-") for n in names) == 1, names
    array_id = res.stdout.split("submitted array job ")[1].split()[0]
    assert not list((REPO_ROOT / "checkpoints").glob(f"slurm-*{array_id}*"))

    got = json.loads((tmp_path / "array" / "manifest.json").read_text())
    want = json.loads((tmp_path / "single" / "manifest.json").read_text())
    assert got["totals"] == want["totals"] and got["totals"]["num_tokens"] > 10_000
    # output.num_shards is an upper bound (small inputs give fewer shards): >= 1 per array task
    assert len(got["shards"]) >= 2
    assert got["shards"] == want["shards"]
    for shard in want["shards"]:
        for ext in (".bin", ".idx"):
            a = (tmp_path / "array" / (shard["prefix"] + ext)).read_bytes()
            b = (tmp_path / "single" / (shard["prefix"] + ext)).read_bytes()
            assert a == b, f"{shard['prefix']}{ext} differs"
