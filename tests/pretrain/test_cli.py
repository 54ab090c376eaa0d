"""`python -m pretrain` as a plain process (no torchrun): build-time errors and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests._dist import REPO_ROOT


def _pretrain(*overrides: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pretrain", "logging=off", *overrides]
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_plain_python_build_time_config_error_exits_2(prepared_data, tmp_path):
    """`python -m pretrain` (no torchrun): an error found after the process group started
    (a split that leaves a shard without training documents) is one clean line, exit 2."""
    proc = _pretrain(
        f"data.paths=[{prepared_data}]", "data.split='1,99,0'", f"run.dir={tmp_path / 'run'}"
    )
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    assert "pretrain: config error: data.split=1,99,0: shard" in stderr
    assert "gets no training documents" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_exits_130_with_one_line(prepared_data, tmp_path):
    proc = _pretrain(
        f"data.paths=[{prepared_data}]", "train.max_steps=1000000", f"run.dir={tmp_path / 'run'}"
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # rank 0 logs one line per step (train=debug: log_interval 1)
        if "step 2/1000000" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "pretrain: interrupted (Ctrl-C); the last saved checkpoint (if any) is kept" in stderr
    assert "Traceback" not in stderr
