"""Preemption: SIGTERM/SIGUSR1/SIGUSR2 -> save at the next step boundary, exit with EXIT_PREEMPTED.

Use in the training loop (every rank):

```python
handler = faults.PreemptionHandler()
handler.install()
...
if handler.should_stop():            # collective: the same answer on every rank
    checkpoint.maybe_save(ctx, force=True)
    checkpoint.finalize(ctx)          # also writes ${run.dir}/PREEMPTED
    sys.exit(faults.EXIT_PREEMPTED)
```

The signal handler only sets a flag (safe at any point of a step, even inside a collective);
the save happens between steps, where every rank holds a consistent state. Launch scripts
requeue the job when a process exits with EXIT_PREEMPTED (single process), or when
`${run.dir}/PREEMPTED` exists (under torchrun, whose own exit code is 1 for any worker exit
code). torchrun forwards SIGTERM to its workers; `pretrain.launch.node` (the Slurm script and
the sweep launchers) makes torchrun ignore SIGUSR1/SIGUSR2 and sends them to the trainers
itself: Slurm's `--signal=USR1@120` warning (our sbatch script) and submitit's USR2 warning.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
"""Exit code after a preemption-triggered save (BSD EX_TEMPFAIL: "try again later")."""

PREEMPTED_MARKER = "PREEMPTED"
"""File written into ${run.dir} after a preemption save; removed when the run resumes."""

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""Signals that request a save-and-exit."""

_REQUESTED = threading.Event()
_STOPPED = threading.Event()
_SIGNAL_NAME: list[str] = []


class PreemptionHandler:
    """Records SIGTERM/SIGUSR1; `should_stop()` answers the same on every rank."""

    def __init__(self, signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = tuple(signals)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Register the handlers (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionHandler.install() outside the main thread: not installed")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Restore the previous handlers."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        if not _REQUESTED.is_set():
            _SIGNAL_NAME.append(signal.Signals(signum).name)
        _REQUESTED.set()

    def requested(self) -> bool:
        """True when this process received a preemption signal (local, no communication)."""
        return _REQUESTED.is_set()

    def should_stop(self) -> bool:
        """True on every rank when any rank received a preemption signal (a MAX all-reduce)."""
        flag = any_rank(_REQUESTED.is_set())
        if flag and not _STOPPED.is_set():
            _STOPPED.set()
            log.warning(
                "preemption signal %s received: saving a checkpoint and exiting with code %d",
                signal_name(),
                EXIT_PREEMPTED,
            )
        return flag


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is True on some rank (a MAX all-reduce; collective).

    The flag tensor lives where the process group's backend can reduce it: on this rank's
    current CUDA device for NCCL (which rejects CPU tensors), on the CPU for gloo.
    """
    import torch  # here: the marker CLI (`python -m pretrain.faults`) needs no torch

    if not torch.distributed.is_initialized():
        return flag
    device = torch.device("cpu")
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def signal_name() -> str:
    """Name of the first preemption signal received by this process ('' if none locally)."""
    return _SIGNAL_NAME[0] if _SIGNAL_NAME else ""


def stopping() -> bool:
    """True once `should_stop()` returned True in this process (the run is being preempted)."""
    return _STOPPED.is_set()


def write_marker(run_dir: Path, step: int, checkpoint: str | None) -> Path:
    """Write ${run.dir}/PREEMPTED (JSON: step, checkpoint, signal, time) for launch scripts."""
    path = Path(run_dir) / PREEMPTED_MARKER
    info = {
        "step": step,
        "checkpoint": checkpoint,
        "signal": signal_name(),
        "exit_code": EXIT_PREEMPTED,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info) + "\n", encoding="utf-8")
    return path


def clear_marker(run_dir: Path) -> None:
    """Remove a PREEMPTED marker (the run is resuming)."""
    (Path(run_dir) / PREEMPTED_MARKER).unlink(missing_ok=True)


def reset_for_tests() -> None:
    """Forget received signals (tests that run several loops in one process)."""
    _REQUESTED.clear()
    _STOPPED.clear()
    _SIGNAL_NAME.clear()


def main(argv: list[str] | None = None) -> int:
    """`python -m pretrain.faults RUN_DIR`: exit EXIT_PREEMPTED if RUN_DIR/PREEMPTED exists.

    For launch scripts under torchrun (whose exit code is 1 whatever its workers return):
    `python -m pretrain.faults "$RUN_DIR"; [ $? -eq 75 ] && scontrol requeue "$SLURM_JOB_ID"`.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pretrain.faults RUN_DIR", file=sys.stderr)
        return 2
    marker = Path(args[0]) / PREEMPTED_MARKER
    if not marker.is_file():
        return 0
    print(marker.read_text(encoding="utf-8").strip())
    return EXIT_PREEMPTED


if __name__ == "__main__":
    raise SystemExit(main())
