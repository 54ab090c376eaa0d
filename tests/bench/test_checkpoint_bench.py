"""bench/checkpoint.py --smoke: sane save/load/async figures; --dir keeps only what it had."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from tests.bench._run import bench_json, run_bench


def _bench(*args: str) -> subprocess.CompletedProcess:
    return run_bench("checkpoint.py", *args)


def _bench_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bench_json(proc.stdout)


def test_smoke_run_reports_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "mine.txt").write_text("not a checkpoint")  # an existing --dir keeps its files
    proc = _bench("--smoke", "--dir", str(out))
    rec = _bench_json(proc)
    assert rec["bench"] == "checkpoint" and rec["repeat"] == 1
    assert rec["params"] > 0 and rec["bytes"] > 4 * rec["params"]  # weights + Adam moments
    for key in ("save_gbps", "load_gbps", "raw_write_gbps", "raw_read_gbps", "save_vs_raw_write"):
        assert math.isfinite(rec[key]) and rec[key] > 0, key
    assert rec["save_s"] > 0 and rec["load_s"] > 0
    assert 0 <= rec["async_blocking_s"] <= rec["async_total_s"]
    assert "save (sync)" in proc.stdout and "async save: blocking" in proc.stdout
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # its temporary run folder removed


def test_bad_size_is_a_usage_error() -> None:
    proc = _bench("--hidden", "100")
    assert proc.returncode == 2 and "multiple of 64" in proc.stderr
