"""One writer per output dir: real concurrent jobs, a SIGKILLed holder, Slurm-array slices."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dp_helpers import REPO, make_cfg, pretrained_cli_args, run_cli, write_jsonl

from data_pipeline.config import SliceConfig
from data_pipeline.errors import OutputError
from data_pipeline.lock import LOCK_FILE, OutputLock, slice_lock_name
from data_pipeline.prepare import run_prepare

HOLD = """
import os, signal, sys, time
from pathlib import Path
from data_pipeline.lock import OutputLock
out, stage, index, count, then = sys.argv[1:6]
with OutputLock(Path(out), stage, int(index), int(count)):
    child = 0
    if then == "fork-and-die":  # a forked child outlives its SIGKILLed parent
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:  # fork's after-in-child hooks (closing lock copies) have run here
            os.write(ready_w, b"x")
            time.sleep(60)
            os._exit(0)
        os.read(ready_r, 1)  # the parent dies only once the child is past fork()
    print("locked", child, flush=True)
    if then == "fork-and-die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(float(then))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts):
    """~3 MB: long enough that a job is still running while a second one starts."""
    return write_jsonl(tmp_path_factory.mktemp("lock") / "corpus.jsonl", texts * 10)


def _args(corpus: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return pretrained_cli_args(corpus, model, out, "output.num_shards=4", *extra)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m ARGS` in the background, its stderr into `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def _hold(out: Path, stage: str, index: int, count: int, then: str) -> subprocess.Popen:
    """A process holding the lock of `out` through the Python API (prints `locked`)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), stage, str(index), str(count), then],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert line[0] == "locked", line
    proc.child = int(line[1])  # type: ignore[attr-defined]
    return proc


def _wait_record(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 90) -> dict:
    """The holder record `proc` writes into the lock file `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended before locking: {log.read_text()}"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("pid") == proc.pid:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{path} never named pid {proc.pid}")


def _inspect_ok(out: Path) -> None:
    proc = run_cli("data_pipeline.inspect", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_second_job_is_refused_and_first_result_is_intact(tmp_path, corpus, sp_model, texts):
    out = tmp_path / "out"
    log = tmp_path / "first.log"
    first = _start(_args(corpus, sp_model, out, "workers=2"), log)
    deadline = time.monotonic() + 90
    while " inputs, " not in log.read_text():  # listed its inputs: it is working on `out`
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)

    second = run_cli(*_args(corpus, sp_model, out, "workers=1"))
    assert first.poll() is None, f"the first job ended before the second: {log.read_text()}"
    assert second.returncode == 2, second.stderr
    assert "is being written by another data_pipeline job" in second.stderr
    assert f"host {socket.gethostname()} pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr
    record = json.loads((out / LOCK_FILE).read_text())
    assert (record["host"], record["pid"]) == (socket.gethostname(), first.pid)
    assert record["stage"] == "all" and record["slice"] == "0/1"

    assert first.wait(timeout=300) == 0, log.read_text()
    _inspect_ok(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["num_docs"] == len(texts) * 10
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # lock removed


def test_sigkilled_holder_lock_is_reused_and_the_rerun_resumes(tmp_path, corpus, sp_model):
    out = tmp_path / "out"
    log = tmp_path / "killed.log"
    job = _start(_args(corpus, sp_model, out, "workers=2", "batch_bytes=65536"), log)
    _wait_record(out / LOCK_FILE, job, log)
    deadline = time.monotonic() + 120
    while not (out / "shard_00000.done.json").exists():
        assert job.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)  # the main process only: its pool workers are orphaned
    assert job.wait() == -signal.SIGKILL
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == job.pid  # left behind

    rerun = run_cli(*_args(corpus, sp_model, out, "workers=2"), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"pid {job.pid}" in rerun.stderr and "the lock is reused" in rerun.stderr
    assert "shard_00000: reusing (checksums verified)" in rerun.stderr
    _inspect_ok(out)
    assert not (out / LOCK_FILE).exists()


def test_slurm_array_slices_run_side_by_side_then_finalize(tmp_path, corpus, sp_model, texts):
    out = tmp_path / "out"
    assert run_cli(*_args(corpus, sp_model, out, "stage=tokenizer")).returncode == 0
    logs = [tmp_path / f"slice{i}.log" for i in range(2)]
    slices = [
        _start(_args(corpus, sp_model, out, f"slice.index={i}", "slice.count=2"), logs[i])
        for i in range(2)
    ]
    for i, proc in enumerate(slices):
        _wait_record(out / slice_lock_name(i, 2), proc, logs[i])
    for proc, log in zip(slices, logs, strict=True):
        assert proc.wait(timeout=300) == 0, log.read_text()
    assert len(list(out.glob("shard_*.done.json"))) == 4 and not (out / "manifest.json").exists()
    final = run_cli(*_args(corpus, sp_model, out, "stage=finalize", "slice.count=2"))
    assert final.returncode == 0, final.stderr
    _inspect_ok(out)
    assert json.loads((out / "manifest.json").read_text())["totals"]["num_docs"] == len(texts) * 10
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def _sliced(cfg, index: int, count: int):
    cfg.slice = SliceConfig(index=index, count=count)
    return cfg


def test_refusals_name_the_holder(tmp_path, corpus_jsonl, sp_model):
    out = tmp_path / "out"
    out.mkdir()
    cfg = make_cfg([corpus_jsonl], out, sp_model)
    holder = _hold(out, "all", 0, 2, "60")  # a running Slurm array task, slice 0 of 2
    try:
        with pytest.raises(OutputError, match=rf"this slice is being written .*pid {holder.pid}"):
            run_prepare(_sliced(cfg, 0, 2))
        with pytest.raises(OutputError, match=rf"this output dir .*pid {holder.pid}.* slice 0/2"):
            run_prepare(_sliced(cfg, 0, 1))
        with pytest.raises(OutputError, match=r"this output dir is being written"):
            run_prepare(make_cfg([corpus_jsonl], out, sp_model, stage="finalize"))
        with pytest.raises(OutputError, match=r"slice 1/3 cannot run next to .*other slice.count"):
            run_prepare(_sliced(cfg, 1, 3))
    finally:
        holder.kill()
        holder.wait()
    holder = _hold(out, "finalize", 0, 1, "60")  # an exclusive holder
    try:
        with pytest.raises(OutputError, match=rf"pid {holder.pid}, stage=finalize slice 0/1"):
            run_prepare(_sliced(cfg, 1, 2))
    finally:
        holder.kill()
        holder.wait()
    assert not any(out.glob("shard_*")) and not (out / "tokenizer.model").exists()


def test_a_forked_child_does_not_keep_a_dead_jobs_lock(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    holder = _hold(out, "all", 0, 1, "fork-and-die")
    assert holder.wait() == -signal.SIGKILL
    try:
        os.kill(holder.child, 0)  # the child is still alive...
        with OutputLock(out, "all", 0, 1):  # ...but holds no lock
            pass
    finally:
        os.kill(holder.child, signal.SIGKILL)
    assert f"pid {holder.pid}" in caplog.text and "the lock is reused" in caplog.text
    assert not (out / LOCK_FILE).exists()
