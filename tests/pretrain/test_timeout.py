"""A rank that stops responding (SIGSTOP, not killed) ends the run within parallel.timeout_minutes.

A real 2-rank gloo run (DP=2: a gradient all-reduce every step); once it trains, rank 1 is
stopped. Rank 0's collective must time out after parallel.timeout_minutes (0.2 = 12 s; gloo
honours the process groups' timeout on CPU), print which collective and step and what to
check, and exit with EXIT_COLLECTIVE_TIMEOUT instead of waiting for torch's 30 minutes.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from pretrain.config import ConfigError, ParallelConfig
from pretrain.parallel import EXIT_COLLECTIVE_TIMEOUT, check_world_size, is_collective_timeout
from tests._dist import REPO_ROOT, build_command, read_metrics, small_gpt_overrides
from tests.pretrain._plain import pretrain_env, worker_exit_codes

TIMEOUT_MINUTES = 0.2
SLACK_S = 60.0
"""Allowed beyond the timeout for rank 0 to notice, report and exit on 2 busy cores."""


def _ranks(launcher: psutil.Process) -> dict[int, psutil.Process]:
    """torchrun's worker processes (its direct children; not their helpers) by their RANK."""
    found: dict[int, psutil.Process] = {}
    for child in launcher.children():
        rank = child.environ().get("RANK")
        if rank is not None:
            found[int(rank)] = child
    return found


def _kill_workers(launcher: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        for process in launcher.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                process.kill()


def _wait_for(condition, deadline: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    while not condition():
        assert proc.poll() is None, f"torchrun ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.distributed
@pytest.mark.slow
def test_stopped_rank_times_out_with_a_message(prepared_data: Path, tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "torchrun.log"
    overrides = [
        *small_gpt_overrides(prepared_data, 100_000),
        f"parallel.timeout_minutes={TIMEOUT_MINUTES}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(
            build_command(2, overrides, run_dir, quiet=True),
            cwd=REPO_ROOT,
            env=pretrain_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    launcher = psutil.Process(proc.pid)
    ranks: dict[int, psutil.Process] = {}
    try:
        _wait_for(
            lambda: len(read_metrics(run_dir)) >= 2, time.monotonic() + 300, "2 steps", proc, log
        )
        ranks = _ranks(launcher)
        assert sorted(ranks) == [0, 1]
        ranks[1].send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        bound = TIMEOUT_MINUTES * 60 + SLACK_S
        _wait_for(
            lambda: not ranks[0].is_running() or ranks[0].status() == psutil.STATUS_ZOMBIE,
            stopped_at + bound,
            "rank 0 to exit",
            proc,
            log,
        )
        print(f"rank 0 exited {time.monotonic() - stopped_at:.1f} s after rank 1 stopped")
    finally:
        _kill_workers(launcher)  # also the stopped rank (torchrun would wait 30 s first)
        proc.wait(timeout=120)
    output = log.read_text()
    assert "pretrain: collective timeout: rank 0:" in output, output[-3000:]
    assert f"parallel.timeout_minutes={TIMEOUT_MINUTES:g}" in output
    assert "during step" in output and "another rank stopped responding" in output
    assert EXIT_COLLECTIVE_TIMEOUT in worker_exit_codes(output), output[-3000:]


def test_timeout_key_is_checked_and_timeouts_are_told_apart() -> None:
    assert check_world_size(ParallelConfig(timeout_minutes=0.1), 2) == 2
    for bad in (0.0, -1.0):
        with pytest.raises(ConfigError, match="parallel.timeout_minutes"):
            check_world_size(ParallelConfig(timeout_minutes=bad), 1)
    gloo = "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting"
    assert is_collective_timeout(RuntimeError(gloo))
    assert not is_collective_timeout(RuntimeError("request timed out (a web service)"))
    assert not is_collective_timeout(ValueError(gloo))
