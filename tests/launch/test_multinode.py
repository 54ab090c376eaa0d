"""launch/torchrun.sh on two "nodes": two torchrun agents on 127.0.0.1, c10d rendezvous.

No Slurm. Each agent starts 1 trainer, so the two agents make a world of 2 (TP=2 or DP=2) that
must train exactly as the one-node 2-process run (`reference_losses`, bitwise on CPU gloo).
The failures end within stated bounds, never hang: a killed agent (its trainer dies with it,
`pretrain.lifeline`; the other rank exits EXIT_PEER_LOST within KILL_BOUND_S), a node that never
joins (RDZV_JOIN_TIMEOUT), an unreachable rendezvous (RDZV_READ_TIMEOUT) and a world size
that TP x PP does not divide (exit 2 on every trainer). See docs/multinode.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from pretrain.lifeline import die_with_parent
from pretrain.parallel import EXIT_PEER_LOST, PeerLost, is_peer_lost
from tests._dist import REPO_ROOT, build_command, read_metrics
from tests.launch.conftest import MULTINODE_STEPS, multinode_overrides
from tests.pretrain._plain import pretrain_env, worker_exit_codes


def _job(test):
    """Marks a test that launches real torchrun agents (the unit tests below run fast)."""
    return pytest.mark.distributed(pytest.mark.slow(test))


SCRIPT = REPO_ROOT / "launch" / "torchrun.sh"
KILL_STEPS = 200
"""A run long enough to be mid-run when one agent is killed."""
KILL_BOUND_S = 60.0
"""The surviving agent exits within this after the kill (measured: 1.1-3.7 s)."""
JOIN_TIMEOUT_S = 10
READ_TIMEOUT_S = 5
RDZV_BOUND_S = 60.0
"""A failed rendezvous ends within this (measured: join 10 s -> 12-20 s, read 5 s -> 9-16 s)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trainer_args(overrides: list[str], run_dir: Path) -> list[str]:
    """`overrides` plus tests._dist.QUIET_OVERRIDES and run.dir, as run_pretrain passes them."""
    command = build_command(1, overrides, run_dir, quiet=True)
    return command[command.index("pretrain") + 1 :]


def _start(node_rank: int, port: int, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """launch/torchrun.sh 1 ARGS as node `node_rank` of 2, output (both streams) into `log`."""
    full_env = pretrain_env()
    full_env.update(
        PYTHON=sys.executable,
        NNODES="2",
        NODE_RANK=str(node_rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RDZV_ID=f"test-{port}",
        **env,
    )
    with log.open("w") as out:
        return subprocess.Popen(
            [str(SCRIPT), "1", *args], cwd=REPO_ROOT, env=full_env, stdout=out, stderr=out
        )


def _start_two(args: list[str], tmp_path: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    """Both nodes: node 0 (it hosts the rendezvous store) first."""
    port, logs = _free_port(), [tmp_path / "node0.log", tmp_path / "node1.log"]
    return [_start(rank, port, args, logs[rank]) for rank in (0, 1)], logs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes of all `procs` (killing every one of them if any outlives `timeout`)."""
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        _kill_trees(procs)
        raise


def _exit_times(
    procs: list[subprocess.Popen], started: float, timeout: float, logs: list[Path]
) -> list[float]:
    """Seconds from `started` until each of `procs` exited; fails (killing all) past `timeout`."""
    took: dict[int, float] = {}
    while len(took) < len(procs):
        for i, proc in enumerate(procs):
            if i not in took and proc.poll() is not None:
                took[i] = time.monotonic() - started
        if time.monotonic() - started > timeout and len(took) < len(procs):
            _kill_trees(procs)
            running = [i for i in range(len(procs)) if i not in took]
            raise AssertionError(f"{running} still running after {timeout} s\n{_text(logs)}")
        time.sleep(0.1)
    return [took[i] for i in range(len(procs))]


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The script, its torchrun agent, the agent's trainers and helpers."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    return []


def _kill_trees(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        for process in reversed(_tree(proc)):
            with contextlib.suppress(psutil.Error):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _agent(script: subprocess.Popen) -> psutil.Process:
    """torchrun.sh's torchrun agent (its child `python -m torch.distributed.run`)."""
    for child in psutil.Process(script.pid).children():
        with contextlib.suppress(psutil.Error):
            if "torch.distributed.run" in child.cmdline():
                return child
    raise AssertionError(f"no torchrun agent under torchrun.sh (pid {script.pid})")


def _text(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)


@_job
@pytest.mark.parametrize("layout", ["tp2", "single"])
def test_two_agents_train_as_one_node(prepared_data, reference_losses, tmp_path, layout):
    """Two agents x 1 process = the one-node 2-process run, loss for loss (TP=2 and DP=2)."""
    expected = reference_losses(layout)
    run_dir = tmp_path / "run"  # one shared dir for both "nodes", as on a shared file system
    args = _trainer_args(multinode_overrides(prepared_data, layout), run_dir)
    procs, logs = _start_two(args, tmp_path)
    assert _wait(procs, 300) == [0, 0], _text(logs)
    assert "torchrun.sh: 2 nodes x 1 process(es), node rank 1; rendezvous c10d" in _text(logs)
    losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
    assert len(losses) == MULTINODE_STEPS, _text(logs)
    # bitwise: the same collectives over the same 2 ranks; only the rendezvous differs
    assert losses == expected


@_job
@pytest.mark.parametrize("victim", [1, 0], ids=["node1", "node0-store-host"])
def test_killed_agent_ends_the_job(prepared_data, tmp_path, victim):
    """SIGKILL to one node's agent only: its trainer dies with it (`pretrain.lifeline`), the
    other node's trainer exits EXIT_PEER_LOST with one clear line, and nothing is left running.
    Node 0's agent also hosts the rendezvous store, so killing it loses that too."""
    survivor = 1 - victim
    run_dir = tmp_path / "run"
    args = _trainer_args(multinode_overrides(prepared_data, "single", KILL_STEPS), run_dir)
    procs, logs = _start_two(args, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while len(read_metrics(run_dir)) < 3:
            assert all(p.poll() is None for p in procs), _text(logs)
            assert time.monotonic() < deadline, "no 3 steps within 300 s\n" + _text(logs)
            time.sleep(0.2)
        job = _tree(procs[0]) + _tree(procs[1])
        _agent(procs[victim]).kill()  # the agent alone, not its process group
        took = _exit_times(procs, time.monotonic(), KILL_BOUND_S, logs)
        print(f"node {survivor} exited {took[survivor]:.1f} s after node {victim}'s agent died")
        left = _alive(job)
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _alive(left)
    finally:
        _kill_trees(procs)
    text, output = _text(logs), logs[survivor].read_text()
    assert procs[victim].returncode == 128 + 9 and procs[survivor].returncode == 1, text
    assert "torchrun.sh: torchrun was killed by signal 9" in logs[victim].read_text()
    assert "pretrain: lost contact with another rank during " in output, text
    assert (
        "a node or process died or was killed; the last saved checkpoint (none) is kept; "
        "rerun the same command to resume" in output
    )
    assert "torchrun.sh: a trainer on this node failed" in output, text
    if victim == 1:  # node 0 keeps its store; its torchrun prints the failure summary
        assert set(worker_exit_codes(output)) == {EXIT_PEER_LOST}, text
    assert not left, f"left running: {[(p.pid, p.cmdline()) for p in left]}"
    assert len(read_metrics(run_dir)) < KILL_STEPS


@_job
def test_rendezvous_failures_end_in_bounded_time(prepared_data, tmp_path):
    """A node that never joins and a rendezvous nobody hosts (both at once: they only wait)."""
    args = _trainer_args(multinode_overrides(prepared_data, "single"), tmp_path / "run")
    logs = [tmp_path / "missing.log", tmp_path / "unreachable.log"]
    started = time.monotonic()
    procs = [
        _start(0, _free_port(), args, logs[0], RDZV_JOIN_TIMEOUT=str(JOIN_TIMEOUT_S)),
        _start(1, _free_port(), args, logs[1], RDZV_READ_TIMEOUT=str(READ_TIMEOUT_S)),
    ]
    took = _exit_times(procs, started, RDZV_BOUND_S, logs)
    print(f"missing node: exit after {took[0]:.1f} s; unreachable: {took[1]:.1f} s")
    text = _text(logs)
    assert [p.returncode for p in procs] == [1, 1], text
    missing, unreachable = (log.read_text() for log in logs)
    assert "RendezvousTimeoutError" in missing, text
    assert "torchrun.sh: not all 2 nodes joined the rendezvous at 127.0.0.1:" in missing, text
    assert f"within RDZV_JOIN_TIMEOUT={JOIN_TIMEOUT_S} s" in missing
    assert "RendezvousConnectionError" in unreachable, text
    assert "torchrun.sh: cannot reach the rendezvous store at 127.0.0.1:" in unreachable, text
    assert f"RDZV_READ_TIMEOUT={READ_TIMEOUT_S} s" in unreachable
    assert not (tmp_path / "run").exists(), "a trainer started"


@_job
def test_world_size_not_divisible_exits_2_on_every_trainer(prepared_data, tmp_path):
    """2 agents x 1 process at TP=2 x PP=2: world 2 is not divisible by 4 -> exit 2, both."""
    args = _trainer_args(multinode_overrides(prepared_data, "tp2pp2"), tmp_path / "run")
    started = time.monotonic()
    procs, logs = _start_two(args, tmp_path)
    codes = _wait(procs, 120)
    print(f"world-size mismatch: both agents exited after {time.monotonic() - started:.1f} s")
    text = _text(logs)
    assert codes == [1, 1], text
    for log in logs:
        output = log.read_text()
        assert set(worker_exit_codes(output)) == {2}, text
        assert (
            "pretrain: config error: world size 2 (torchrun --nproc-per-node x nodes) is not "
            "divisible by parallel.tensor_model_parallel_size=2 x "
            "parallel.pipeline_model_parallel_size=2 = 4"
        ) in output, text
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:20153: Connection reset by peer. This is typically caused by a remote worker "
    "hanging or bugs in the application. Check the logs of the remote worker before reporting "
    "an error. GLHF!"
)


def _raised_in_step(step: int) -> RuntimeError:
    """GLOO_RESET raised inside train_step(ctx) with ctx.state.step == step (as in train.py)."""

    def train_step(ctx: SimpleNamespace) -> None:
        raise RuntimeError(GLOO_RESET)

    try:
        train_step(SimpleNamespace(state=SimpleNamespace(step=step)))
    except RuntimeError as exc:
        return exc
    raise AssertionError("not raised")


def test_peer_lost_is_told_apart_and_worded():
    assert is_peer_lost(RuntimeError(GLOO_RESET))
    assert is_peer_lost(RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer"))
    nccl = "NCCL error: remote process exited or there was a network error, NCCL version 2.21"
    assert is_peer_lost(RuntimeError(nccl))
    assert not is_peer_lost(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out"))
    assert not is_peer_lost(RuntimeError("HTTP: connection reset by peer"))  # not torch's
    assert not is_peer_lost(OSError(GLOO_RESET))
    message = str(PeerLost(_raised_in_step(4), Path("/runs/a/iter_0000002")))
    assert message == (
        "lost contact with another rank during step 5 (Read error [127.0.0.1]:20153: "
        "Connection reset by peer): a node or process died or was killed; the last saved "
        "checkpoint (/runs/a/iter_0000002) is kept; rerun the same command to resume"
    )
    assert "the last saved checkpoint (none) is kept" in str(PeerLost(RuntimeError("x"), None))


def test_die_with_parent_kills_the_orphan(tmp_path):
    """A process under torchrun (LOCAL_RANK set) dies with its parent; elsewhere a no-op."""
    assert not die_with_parent()  # pytest is not under torchrun
    pid_file = tmp_path / "child.pid"
    child = (
        "import os, time; from pretrain.lifeline import die_with_parent; "
        f"assert die_with_parent(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
        "time.sleep(60)"
    )
    parent = (
        "import os, subprocess, sys, time; env = dict(os.environ, LOCAL_RANK='0'); "
        f"subprocess.Popen([sys.executable, '-c', {child!r}], env=env); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO_ROOT, env=pretrain_env())
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, "no child started"
            time.sleep(0.05)
        orphan = [psutil.Process(int(pid_file.read_text()))]
        proc.send_signal(signal.SIGKILL)  # the parent only
        deadline = time.monotonic() + 5
        while _alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan), "the child outlived its killed parent"
    finally:
        _kill_trees([proc])


def _command_line(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[str, str]:
    """(the torchrun arguments torchrun.sh would run, its stderr), with PYTHON=echo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"  # a stand-in: `scontrol show hostnames n[1-2]`
    scontrol.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "n1\\nn2\\n"\n')
    scontrol.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NNODES"))}
    for key in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "RDZV_ID"):
        clean.pop(key, None)
    full_env = {**clean, "PYTHON": "echo", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        [str(SCRIPT), *args], env={**full_env, **env}, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip(), res.stderr.strip()


def test_command_lines(tmp_path):
    """One node unchanged; NNODES>1 and Slurm: c10d rendezvous, node 0 hosts the store."""
    one, told = _command_line(tmp_path, {}, "2", "model=tiny")
    assert one == (
        "-m torch.distributed.run --nnodes 1 --node-rank 0 --nproc-per-node 2 --master-addr "
        "127.0.0.1 --master-port 29500 -m pretrain model=tiny"
    )
    assert told == "torchrun.sh: 1 node x 2 process(es); master 127.0.0.1:29500"
    env = {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h0", "RDZV_JOIN_TIMEOUT": "9"}
    two, told = _command_line(tmp_path, env, "1")
    assert two == (
        "-m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d "
        "--rdzv-endpoint h0:29500 --rdzv-id pretrain --rdzv-conf "
        "join_timeout=9,read_timeout=60,is_host=1 --max-restarts 0 -m pretrain"
    )
    assert told == (
        "torchrun.sh: 2 nodes x 1 process(es), node rank 0; rendezvous c10d h0:29500 id "
        "pretrain; join timeout 9 s, store timeout 60 s"
    )
    slurm = {"SLURM_JOB_ID": "4321", "SLURM_NNODES": "2", "SLURM_NODEID": "1"}
    on_slurm, _ = _command_line(tmp_path, {**slurm, "SLURM_JOB_NODELIST": "n[1-2]"}, "8")
    assert (
        "--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint n1:29821 "
        "--rdzv-id 4321 --rdzv-conf join_timeout=300,read_timeout=60,is_host=0"
    ) in on_slurm
