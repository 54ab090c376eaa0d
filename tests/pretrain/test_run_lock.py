"""One training per run.dir (`pretrain.run_lock`): real concurrent processes on one run.dir.

A second training into a run.dir that a live training holds is refused before it writes
anything there: exit 2 naming the holder, on every rank, also when the ranks are plain
processes as srun starts them. A SIGKILLed holder's lock is released by the OS: the next run
starts, reporting the leftover lock file as stale.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pretrain.run_lock import LOCK_FILE
from tests._dist import REPO_ROOT, read_metrics, small_gpt_overrides
from tests.pretrain._plain import plain_command, pretrain_env, run_plain

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of run_dir except those the running holder keeps appending to."""
    growing = {"metrics.jsonl", "pretrain.log"}
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in growing
    }


def _start_holder(data: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    """A long plain training (one process, which holds the lock itself)."""
    with log.open("w") as out:
        holder = subprocess.Popen(
            plain_command(small_gpt_overrides(data, 100_000), run_dir),
            cwd=REPO_ROOT,
            env=pretrain_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 240
    while len(read_metrics(run_dir)) < 1:
        assert holder.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the holder did not start training"
        time.sleep(0.5)
    return holder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_ranks(
    overrides: list[str], run_dir: Path, world: int
) -> list[subprocess.CompletedProcess]:
    """`world` plain processes with RANK/WORLD_SIZE set, as srun starts them (no torchrun agent
    that stops the others when one exits): each must exit on its own."""
    env = {**pretrain_env(), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(_free_port())
    procs = [
        subprocess.Popen(
            plain_command(overrides, run_dir),
            cwd=REPO_ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_second_training_is_refused_and_a_killed_holders_lock_is_reused(
    prepared_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    holder = _start_holder(prepared_data, run_dir, tmp_path / "holder.log")
    try:
        before = _snapshot(run_dir)
        assert str(holder.pid) in (run_dir / LOCK_FILE).read_text()
        second = [*small_gpt_overrides(prepared_data, 2), "seed=7"]

        plain = run_plain(second, run_dir)
        assert plain.returncode == 2, plain.stderr[-3000:]
        assert f"run.dir={run_dir} is in use" in plain.stderr
        assert f"pid {holder.pid}" in plain.stderr and "Traceback" not in plain.stderr

        rank0, rank1 = _run_ranks(second, run_dir, world=2)
        assert (rank0.returncode, rank1.returncode) == (2, 2), rank0.stderr + rank1.stderr
        assert f"pid {holder.pid}" in rank0.stderr  # rank 0 names the holder
        assert "could not take its lock" in rank1.stderr  # rank 1 learned it collectively
        assert _snapshot(run_dir) == before  # the refused launches wrote nothing
        assert holder.poll() is None  # and the holder trains on
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)

    after_kill = run_plain(small_gpt_overrides(prepared_data, 2), run_dir)
    assert after_kill.returncode == 0, after_kill.stderr[-3000:]
    assert f"pid {holder.pid}" in after_kill.output and "stale, reusing it" in after_kill.output
    assert (run_dir / LOCK_FILE).read_text() == ""  # a clean exit leaves no holder details
    assert not _pid_alive(holder.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
