"""Exact resume through real `torchrun -m pretrain` runs, and every way a run can be stopped.

One straight run (DP=2, distributed optimizer, 16 steps, a save every 4) is the reference.
A second run directory goes through a chain of failures and must reproduce the reference's
per-step losses and grad norms *bitwise* (fp32, CPU), step by step:

1. killed (SIGKILL, all ranks) in the middle of the save of step 8 -> torn tmp dir, latest=4;
2. resumed from 4, a NaN loss injected at step 10 with max_skipped_steps=1 -> training stops
   with an error, the last good checkpoint (8) stays latest, the torn dir is gone;
3. resumed from 8 with async saves, SIGTERM sent to torchrun -> saves at the next step
   boundary, writes PREEMPTED, exits;
4. resumed from there to the end. One W&B run id across all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pretrain import faults
from tests._dist import REPO_ROOT, build_command, read_metrics, run_pretrain
from tests.checkpoint._common import STEPS, reference_overrides, train_records

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _overrides(data: Path, *extra: str) -> list[str]:
    return reference_overrides(data, *extra)


def _assert_same_as_reference(run_dir: Path, reference: dict[int, dict], steps: set[int]) -> None:
    records = train_records(run_dir)
    seen = {r["step"] for r in records}
    assert steps <= seen, f"steps {sorted(steps - seen)} were never logged in {run_dir}"
    for rec in records:
        ref = reference[rec["step"]]
        assert (rec["loss"], rec["grad_norm"]) == (ref["loss"], ref["grad_norm"]), (
            f"step {rec['step']}: resumed loss/grad_norm {rec['loss']!r}/{rec['grad_norm']!r} "
            f"!= uninterrupted {ref['loss']!r}/{ref['grad_norm']!r}"
        )


def _latest(run_dir: Path) -> str:
    return (run_dir / "latest").read_text().strip()


@pytest.fixture(scope="module")
def reference(reference_run: Path) -> dict[int, dict]:
    records = {r["step"]: r for r in train_records(reference_run)}
    assert sorted(records) == list(range(1, STEPS + 1))
    assert sorted(p.name for p in reference_run.glob("iter_*")) == ["iter_0000012", "iter_0000016"]
    return records


def _preempt(data: Path, run_dir: Path) -> tuple[int, dict]:
    """Start a resumed run, SIGTERM torchrun once it logged a new step; return (rc, marker)."""
    before = len(read_metrics(run_dir))
    cmd = build_command(2, _overrides(data, "checkpoint.async_save=true"), run_dir, quiet=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while len(read_metrics(run_dir)) <= before and proc.poll() is None:
        assert time.monotonic() < deadline, "resumed run logged no step within 240 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    marker = run_dir / faults.PREEMPTED_MARKER
    assert marker.is_file(), f"no PREEMPTED marker (rc {proc.returncode}):\n{out[-3000:]}"
    # torchrun itself exits 1 on a signal whatever its workers return: hence the marker file.
    assert proc.returncode != 0 and "preempted at step" in out, out[-3000:]
    assert "async save of" in out and "training blocked" in out, out[-3000:]
    return proc.returncode, json.loads(marker.read_text())


def test_exact_resume_through_kill_nan_and_preemption(
    reference: dict[int, dict], prepared_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "chain"
    # 1. SIGKILL mid-save of step 8: the torn checkpoint must never be picked.
    crash = run_pretrain(
        2, _overrides(prepared_data), run_dir, check=False, env={"PRETRAIN_CKPT_CRASH_AT_SAVE": "8"}
    )
    assert crash.returncode != 0
    assert (run_dir / "iter_0000008.tmp-incomplete").is_dir()
    assert _latest(run_dir) == "iter_0000004"
    _assert_same_as_reference(run_dir, reference, set(range(1, 9)))

    # 2. Resume from 4; NaN at step 10 stops training; 8 (saved on the way) stays latest.
    nan = run_pretrain(
        2,
        _overrides(prepared_data, "train.max_skipped_steps=1"),
        run_dir,
        check=False,
        env={"PRETRAIN_INJECT_NAN_AT_STEP": "10"},
    )
    assert nan.returncode != 0
    assert "train.max_skipped_steps=1" in nan.stderr + nan.stdout
    assert "loaded" in nan.stderr + nan.stdout and "iter_0000004" in nan.stderr + nan.stdout
    assert _latest(run_dir) == "iter_0000008"
    assert not list(run_dir.glob("*.tmp-incomplete")), "the torn save was not cleaned up"
    assert not (run_dir / "iter_0000010").exists()
    _assert_same_as_reference(run_dir, reference, set(range(1, 10)))

    # 3. Resume from 8 with async saves, preempted by SIGTERM.
    _, marker = _preempt(prepared_data, run_dir)
    stop = marker["step"]
    assert 9 <= stop < STEPS, marker
    assert marker["exit_code"] == faults.EXIT_PREEMPTED and marker["signal"] == "SIGTERM"
    assert _latest(run_dir) == f"iter_{stop:07d}"
    assert marker["checkpoint"].endswith(f"iter_{stop:07d}")

    # 4. Resume to the end: every step ever logged equals the uninterrupted run.
    run_pretrain(2, _overrides(prepared_data), run_dir)
    assert not (run_dir / faults.PREEMPTED_MARKER).exists()
    _assert_same_as_reference(run_dir, reference, set(range(1, STEPS + 1)))
    meta = json.loads((run_dir / f"iter_{STEPS:07d}" / "meta.json").read_text())
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}
    assert run_ids == {meta["train_state"]["wandb_run_id"]}, run_ids


def test_resume_with_changed_dataset_is_refused(
    reference_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(prepared_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["inputs"] = [{"path": "another-corpus.jsonl", "size": 1}]
    (data / "manifest.json").write_text(json.dumps(manifest))
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    res = run_pretrain(1, _overrides(data, "logging.wandb.mode=disabled"), run_dir, check=False)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "data.paths[0]" in out and "manifest.json sha256 changed" in out, out[-3000:]
    assert "checkpoint.weights_only=true" in out
