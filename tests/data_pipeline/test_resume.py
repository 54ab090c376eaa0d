"""kill -9 at any moment, rerun, and end byte-identical; damaged shards are rebuilt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from dp_helpers import REPO, make_cfg, shard_bytes, write_jsonl

from data_pipeline.prepare import run_prepare

SHARDS = 6


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory, texts):
    """~14 MB: the small corpus 48 times (2.4 MB per shard, so a kill lands mid-shard)."""
    return write_jsonl(tmp_path_factory.mktemp("big") / "big.jsonl", texts * 48)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, big_corpus, sp_model):
    out = tmp_path_factory.mktemp("ref") / "out"
    run_prepare(make_cfg([big_corpus], out, sp_model, output__num_shards=SHARDS))
    return shard_bytes(out)


def _start(corpus, model, out):
    args = [
        sys.executable,
        "-m",
        "data_pipeline",
        "input=files",
        f"input.paths=[{corpus}]",
        f"tokenizer.model={model}",
        f"output.dir={out}",
        f"output.num_shards={SHARDS}",
        "workers=2",
        "batch_bytes=65536",
        "progress=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(proc, predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "the condition never happened"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its pool workers, like a node failure
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_mid_shard_then_after_shard_then_resume(tmp_path, big_corpus, sp_model, reference):
    out = tmp_path / "out"
    # 1) killed while the first shard is being written (a temporary file exists)
    proc = _start(big_corpus, sp_model, out)
    _kill_when(proc, lambda: any(out.glob(".shard_00000.tmp-*.bin")))
    assert not (out / "manifest.json").exists()
    assert not (out / "shard_00000.bin").exists()
    # 2) rerun, killed once some shards completed
    proc = _start(big_corpus, sp_model, out)
    _kill_when(proc, lambda: len(list(out.glob("shard_*.done.json"))) >= 2)
    done = len(list(out.glob("shard_*.done.json")))
    assert 2 <= done < SHARDS and not (out / "manifest.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_0000[01].bin")}
    # 3) rerun to completion (in-process): completed shards are reused, the rest redone
    run_prepare(make_cfg([big_corpus], out, sp_model, output__num_shards=SHARDS, workers=2))
    assert shard_bytes(out) == reference
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_0000[01].bin")} == kept
    assert sorted(p.name for p in out.iterdir() if ".tmp-" in p.name) == []
    assert (out / "manifest.json").exists()


def test_damaged_shard_is_rebuilt(tmp_path, big_corpus, sp_model, reference):
    out = tmp_path / "out"
    cfg = make_cfg([big_corpus], out, sp_model, output__num_shards=SHARDS)
    run_prepare(cfg)
    untouched = (out / "shard_00000.bin").stat().st_mtime_ns
    damaged = out / "shard_00003.bin"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (out / "shard_00004.idx").unlink()
    run_prepare(cfg)
    assert shard_bytes(out) == reference
    assert (out / "shard_00000.bin").stat().st_mtime_ns == untouched
