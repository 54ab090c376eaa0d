"""The submitit job of one sweep point: on every node, one torchrun on the resolved config.

`PointJob()(config_file, point, run_dir, nproc, to_the_end)` runs in each task of the job
(one task per node). Node 0 keeps the point's `point.json` up to date.

Preemption: submitit's signal (USR2, `hydra.launcher.signal_delay_s` before the time limit,
or `scancel --signal=USR2`) reaches this process; `pretrain.launch.node.forwarding` passes it
to the trainers, which save at the next step boundary and exit 75. On node 0 submitit then
calls `checkpoint()`, which waits for that save and hands submitit a fresh submission of the
same point: submitit requeues the job, and the requeued job resumes from `${run.dir}/latest`.
A SIGTERM (`scontrol requeue`, `scancel`) makes the trainers save too; the job then waits for
Slurm to end it (a requeue restarts it) instead of reporting the point as done.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from pretrain.launch.node import (
    TorchrunProcess,
    exit_code,
    forwarding,
    submitit_topology,
    torchrun_command,
)
from pretrain.sweep.points import point_status, update_point

SAVE_WAIT_S = 600
"""How long `checkpoint()` waits for the trainers' save (Slurm kills at the time limit anyway)."""
REQUEUE_GRACE_S = 120
"""After a SIGTERM-triggered save: how long to wait for Slurm's requeue/kill before returning."""


class PointJob:
    """A checkpointable submitit callable (stateless when pickled)."""

    def __init__(self) -> None:
        self._torchrun: TorchrunProcess | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._torchrun = None

    def __call__(
        self, config_file: str, point: str, run_dir: str, nproc: int, to_the_end: bool = True
    ) -> dict[str, Any]:
        """Run this node's torchrun; returns {"status", "exit_code", "error"}."""
        import submitit

        topology = submitit_topology(nproc)
        node0 = topology.node_rank == 0
        if node0:  # the id `scancel`/`scontrol` take (array jobs: <array id>_<task>)
            update_point(run_dir, status="running", job_id=str(submitit.JobEnvironment().job_id))
        print(f"sweep point {point}: {topology.describe()}", flush=True)
        self._torchrun = TorchrunProcess(torchrun_command(topology, config_file))
        with forwarding(self._torchrun.proc, chain=True) as received:
            raw = self._torchrun.wait() or 0
        code = exit_code(raw, run_dir)
        status = point_status(code, to_the_end)
        error = "" if code == 0 else f"torchrun exit {raw} (see the job's log in .submitit/)"
        if status == "preempted":
            error = "saved after a preemption signal; a requeue resumes it"
        if node0:
            update_point(run_dir, status=status, exit_code=code, error=error or None)
        if status == "preempted" and signal.SIGTERM in received:
            time.sleep(REQUEUE_GRACE_S)  # Slurm requeues or cancels this job meanwhile
        return {"status": status, "exit_code": code, "error": error}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on node 0 after its preemption signal: wait for the trainers'
        save, then resubmit the same point (submitit requeues the job)."""
        import submitit

        if self._torchrun is not None:
            self._torchrun.wait(timeout=SAVE_WAIT_S)
        run_dir = args[2] if len(args) > 2 else kwargs.get("run_dir")
        if run_dir:
            update_point(run_dir, status="preempted", error="requeued after a preemption signal")
        return submitit.helpers.DelayedSubmission(PointJob(), *args, **kwargs)
