"""One training per run directory: an exclusive lock on `${run.dir}/.pretrain.lock`.

Two trainings writing one run.dir (a Slurm requeue while the old job still runs, a second
launch by mistake) overwrite each other's checkpoints, `latest` and metrics. Global rank 0
takes an `fcntl.flock` on the lock file in `pretrain.__main__`, after validation and before it
writes anything into run.dir, and holds it for the whole run. The operating system drops the
lock when its holder dies, even by SIGKILL or a node crash of a local disk, so a lock is never
stale; the file itself stays (a crashed holder leaves its details in it, reported as stale and
reused by the next run; a clean exit empties it).

The holder's host, pid, SLURM_JOB_ID and start time are written into the file, so a refused
launch says who holds the run. A refused rank 0 writes nothing; after the process groups start
every rank learns the outcome from `agree` (one all-reduce) and all exit 2 together.

Shared file systems: NFS (v4, or v3 with lockd) and Lustre mounted with `flock` support it; a
file system without locks (Lustre `noflock`) gives a warning and the run goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".pretrain.lock"
"""The lock file's name inside run.dir."""


def holder_info() -> dict[str, Any]:
    """Who this process is: recorded in the lock file while it holds the lock."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(info: dict[str, Any] | None) -> str:
    """`host H, pid P, Slurm job J, started T` (or `an unknown process`)."""
    if not info:
        return "an unknown process (its lock file holds no details)"
    parts = [f"host {info.get('host', '?')}", f"pid {info.get('pid', '?')}"]
    if info.get("slurm_job_id"):
        parts.append(f"Slurm job {info['slurm_job_id']}")
    parts.append(f"started {info.get('started', '?')}")
    return ", ".join(parts)


def _read_info(fd: int) -> dict[str, Any] | None:
    raw = os.pread(fd, 1 << 16, 0)
    if not raw.strip():
        return None
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"host": "?", "pid": "?", "started": "? (unreadable lock file)"}
    return info if isinstance(info, dict) else None


class RunLock:
    """The exclusive lock of one run directory (taken by global rank 0 only)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir).expanduser()
        self.path = self.run_dir / LOCK_FILE
        self.refusal: str | None = None
        """Why the lock was not taken (another training holds it), else None."""
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or set `refusal`; ConfigError when run.dir cannot be written."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"run.dir={self.run_dir}: cannot create {self.path} ({exc.strerror}); "
                "checkpoints, logs and metrics are written there. Choose a writable run.dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_info(fd)
            os.close(fd)
            self.refusal = self._refusal_message(holder)
            return self
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            log.warning(
                "run.dir=%s: its file system does not support locks (%s); a second training "
                "into this run.dir would not be refused",
                self.run_dir,
                exc.strerror,
            )
        self._take(fd)
        return self

    def _take(self, fd: int) -> None:
        previous = _read_info(fd)
        if previous:
            log.warning(
                "run.dir=%s: the lock file %s was left by a training that is gone (%s; killed "
                "or crashed): it is stale, reusing it",
                self.run_dir,
                LOCK_FILE,
                describe(previous),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _refusal_message(self, holder: dict[str, Any] | None) -> str:
        stop = []
        if holder and holder.get("slurm_job_id"):
            stop.append(f"scancel {holder['slurm_job_id']}")
        if holder and holder.get("pid"):
            stop.append(f"kill {holder['pid']} on {holder.get('host', '?')}")
        how = f" (e.g. {' / '.join(stop)})" if stop else ""
        return (
            f"run.dir={self.run_dir} is in use: another training holds its lock {self.path} "
            f"({describe(holder)}). Two trainings in one run.dir corrupt each other's "
            f"checkpoints and metrics; wait until it ends, stop it{how}, or choose another "
            "run.dir"
        )

    def release(self) -> None:
        """Empty the lock file (a clean exit leaves no stale details) and unlock it."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            # explicitly: a forked child (e.g. a checkpoint writer) shares the descriptor
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def agree(lock: RunLock | None, run_dir: str, device: torch.device) -> None:
    """Collective, right after the process groups start: every rank raises ConfigError when
    rank 0 was refused the run.dir lock (one all-reduce; a no-op without a process group)."""
    refused = lock is not None and lock.refusal is not None
    flag = torch.tensor([1 if refused else 0], dtype=torch.int32, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flag)
    if lock is not None and lock.refusal is not None:
        raise ConfigError(lock.refusal)
    if int(flag.item()):
        raise ConfigError(
            f"run.dir={run_dir} is in use by another training (global rank 0 could not take its "
            f"lock {LOCK_FILE}; its message names the holder)"
        )
