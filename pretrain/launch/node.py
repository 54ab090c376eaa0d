"""One node of a (multi-node) job: one torchrun whose trainers read a resolved-config file.

    srun --ntasks-per-node=1 python -m pretrain.launch.node RESOLVED.yaml [--nproc-per-node G]

The topology comes from Slurm (`SLURM_NNODES`, `SLURM_NODEID`, the first host of
`SLURM_JOB_NODELIST` as the c10d rendezvous endpoint, `SLURM_JOB_ID` as the rendezvous id) or,
in a submitit job, from `submitit.JobEnvironment`; a single node uses `--standalone`.

Timeouts (docs/multinode.md): every node must join the rendezvous within
`RDZV_JOIN_TIMEOUT` seconds (default 300), else torchrun fails with a RendezvousTimeoutError;
collectives time out after `parallel.timeout_minutes`.

Signals: torchrun ignores SIGUSR1/SIGUSR2 (Slurm's `--signal` reaches every process of the
step, and torchrun would otherwise die of it); this process forwards them, and SIGTERM, to
the trainers, which save at the next step boundary and exit with EXIT_PREEMPTED (75). The exit
code is torchrun's, or 75 when the trainers wrote `${run.dir}/PREEMPTED`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pretrain.launch.resolved import CONFIG_FLAG, read_resolved

DEFAULT_JOIN_TIMEOUT_S = 300
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


@dataclass
class Topology:
    """Where this node sits in the job."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rdzv_id: str = "pretrain"
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S

    @property
    def world_size(self) -> int:
        """Trainer processes in the whole job."""
        return self.nnodes * self.nproc_per_node

    def describe(self) -> str:
        """One line for the job log."""
        where = (
            "standalone"
            if self.nnodes == 1
            else f"rendezvous {self.master_addr}:{self.master_port} (c10d, id {self.rdzv_id}, "
            f"join timeout {self.join_timeout_s} s)"
        )
        return (
            f"node {self.node_rank} of {self.nnodes} x {self.nproc_per_node} processes "
            f"(world {self.world_size}), {where}"
        )


def default_nproc() -> int:
    """NPROC_PER_NODE, else Slurm's GPUs on this node, else the visible GPUs, else 1."""
    for var in ("NPROC_PER_NODE", "SLURM_GPUS_ON_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        import torch

        return max(torch.cuda.device_count(), 1)
    except Exception:  # noqa: BLE001 - no torch/CUDA: one CPU process
        return 1


def _port_for(job_id: str) -> int:
    env = os.environ.get("MASTER_PORT", "")
    if env.isdigit():
        return int(env)
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return 29500 + int(digits[-6:]) % 1000


def _join_timeout() -> int:
    value = os.environ.get("RDZV_JOIN_TIMEOUT", "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_JOIN_TIMEOUT_S


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return out[0] if out else nodelist.split(",")[0] or "127.0.0.1"


def slurm_topology(nproc: int) -> Topology:
    """This node's place in the Slurm job (one task per node)."""
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    return Topology(
        nnodes=int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES", "1")),
        node_rank=int(os.environ.get("SLURM_NODEID", "0")),
        nproc_per_node=nproc,
        master_addr=_first_slurm_host(),
        master_port=_port_for(job_id),
        rdzv_id=job_id,
        join_timeout_s=_join_timeout(),
    )


def submitit_topology(nproc: int) -> Topology:
    """This node's place in a submitit job (Slurm or local executor)."""
    import submitit

    env = submitit.JobEnvironment()
    job_id = str(env.job_id)
    return Topology(
        nnodes=env.num_nodes,
        node_rank=env.node,
        nproc_per_node=nproc,
        master_addr=env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1",
        master_port=_port_for(job_id),
        rdzv_id=job_id.replace("_", "-"),
        join_timeout_s=_join_timeout(),
    )


def torchrun_command(topology: Topology, config_file: str | Path) -> list[str]:
    """`python -m torch.distributed.run ... -m pretrain --resolved-config FILE`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--max-restarts", "0"]
    cmd += ["--nproc-per-node", str(topology.nproc_per_node)]
    if topology.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [
            "--nnodes",
            str(topology.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{topology.master_addr}:{topology.master_port}",
            "--rdzv-id",
            topology.rdzv_id,
            "--rdzv-conf",
            f"join_timeout={topology.join_timeout_s}",
        ]
    return [*cmd, "-m", "pretrain", CONFIG_FLAG, str(config_file)]


def _ignore_preemption_signals() -> None:
    """In torchrun (before exec): SIGUSR1/2 ignored; the trainers install their own handlers."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def forward_signal(proc: subprocess.Popen, signum: int) -> None:
    """SIGTERM to torchrun (it passes it on); SIGUSR1/2 straight to the trainers."""
    import psutil

    try:
        if signum == signal.SIGTERM:
            proc.send_signal(signum)
            return
        for child in psutil.Process(proc.pid).children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signum)
    except (psutil.Error, ProcessLookupError):
        pass


@contextlib.contextmanager
def forwarding(proc: subprocess.Popen, chain: bool = True) -> Iterator[list[int]]:
    """Forward FORWARDED signals to `proc`'s trainers; with `chain`, then call the handler
    that was installed before (submitit's checkpoint-and-requeue handler). Yields the list of
    signals received so far."""
    previous: dict[int, object] = {}
    received: list[int] = []

    def make(sig: int, prev: object) -> Callable[[int, object], None]:
        def handler(signum: int, frame: object) -> None:
            received.append(signum)
            forward_signal(proc, signum)
            if chain and callable(prev):
                prev(signum, frame)

        return handler

    for sig in FORWARDED:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, make(sig, previous[sig]))
    try:
        yield received
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)  # type: ignore[arg-type]


class TorchrunProcess:
    """A started torchrun, reaped by a thread so that a signal handler may wait for it."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_preemption_signals)
        self._done = threading.Event()
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        self.proc.wait()
        self._done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        if timeout is None:
            while not self._done.wait(1.0):
                pass
        elif not self._done.wait(timeout):
            return None
        return self.proc.returncode


def preempted(run_dir: str | Path) -> bool:
    """The trainers saved and exited after a preemption signal (`${run.dir}/PREEMPTED`)."""
    from pretrain.faults import PREEMPTED_MARKER

    return (Path(run_dir) / PREEMPTED_MARKER).exists()


def exit_code(torchrun_code: int, run_dir: str | Path) -> int:
    """torchrun's code (always 1 for a failed worker), or 75 for a saved preemption."""
    from pretrain.faults import EXIT_PREEMPTED

    if torchrun_code != 0 and preempted(run_dir):
        return EXIT_PREEMPTED
    return torchrun_code


def run_dir_of(config_file: str | Path) -> str:
    """`run.dir` of a resolved-config file."""
    config, _ = read_resolved(config_file)
    return str(config["run"]["dir"])


def main(argv: list[str] | None = None) -> int:
    """CLI: one node of a Slurm job (`srun --ntasks-per-node=1 python -m pretrain.launch.node`)."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.launch.node", description=__doc__)
    parser.add_argument("config_file", help="resolved config (python -m pretrain.launch.resolve)")
    parser.add_argument("--nproc-per-node", type=int, default=None)
    args = parser.parse_args(argv)
    from pretrain.config import ConfigError

    try:
        run_dir = run_dir_of(args.config_file)
    except ConfigError as exc:
        print(f"pretrain.launch.node: config error: {exc}", file=sys.stderr, flush=True)
        return 2
    nproc = args.nproc_per_node or default_nproc()
    topology = slurm_topology(nproc) if "SLURM_JOB_ID" in os.environ else Topology(1, 0, nproc)
    print(f"pretrain.launch.node: {topology.describe()}", flush=True)
    torchrun = TorchrunProcess(torchrun_command(topology, args.config_file))
    with forwarding(torchrun.proc, chain=False):
        code = torchrun.wait()
    return exit_code(code or 0, run_dir)


if __name__ == "__main__":
    sys.exit(main())
