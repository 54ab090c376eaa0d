"""bench/train.py runs with no prepared data: --smoke builds its own dataset, then reuses it.

The benchmark runs as a subprocess (as `make bench` runs it); `--build-dir` puts the dataset it
builds in a temporary folder, so the test neither needs nor touches checkpoints/.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from tests.bench._run import bench_json, run_bench

COLUMNS = {
    "model",
    "params_m",
    "precision",
    "tokens_per_step",
    "ours_tokens_per_s",
    "bare_tokens_per_s",
    "overhead_pct",
    "data_ms",
    "fwd_bwd_ms",
    "optim_ms",
    "tflops_per_device",
    "mfu",
    "peak_mem_gib",
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return run_bench("train.py", *args)


def _bench_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bench_json(proc.stdout)


def _check_tiny_row(row: dict) -> None:
    assert set(row) == COLUMNS
    assert row["model"] == "tiny" and row["precision"] == "fp32" and row["params_m"] > 0
    assert row["tokens_per_step"] == 16 * 128
    assert row["ours_tokens_per_s"] > 0 and row["bare_tokens_per_s"] > 0
    assert math.isfinite(row["overhead_pct"]) and row["overhead_pct"] > -100
    assert row["fwd_bwd_ms"] > 0 and row["data_ms"] >= 0 and row["tflops_per_device"] > 0


def test_smoke_builds_its_dataset_then_reuses_it(tmp_path: Path) -> None:
    data = tmp_path / "bench_data"
    first = _bench("--smoke", "--build-dir", str(data))
    result = _bench_json(first)
    assert result["bench"] == "train" and result["data"] == str(data)
    assert (data / "manifest.json").is_file()
    assert "building the benchmark dataset" in first.stderr
    assert [row["model"] for row in result["results"]] == ["tiny"]
    _check_tiny_row(result["results"][0])
    if result["device"] == "cpu":
        assert result["results"][0]["mfu"] is None and result["results"][0]["peak_mem_gib"] is None
    manifest_mtime = (data / "manifest.json").stat().st_mtime_ns
    again = _bench("--smoke", "--build-dir", str(data))
    _check_tiny_row(_bench_json(again)["results"][0])
    assert "reusing the benchmark dataset" in again.stderr
    assert (data / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert [p.name for p in tmp_path.iterdir()] == ["bench_data"]  # no temporary build left


def test_unknown_model_is_a_usage_error() -> None:
    proc = _bench("--models", "nope")
    assert proc.returncode == 2 and "unknown --models" in proc.stderr
