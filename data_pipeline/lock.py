"""One writer per output dir: an OS file lock (flock) held for the whole job.

Two preparations writing one `output.dir` corrupt each other (each deletes the other's
temporary files, stale shards and manifest). So a job locks `OUTPUT_DIR/.data_pipeline.lock`
before it changes anything, and keeps the lock until it ends:

- `stage=all` with one slice, `stage=tokenizer` and `stage=finalize` lock it exclusively;
- a Slurm array task (`stage=all`, `slice.count > 1`) locks it shared, so the tasks of one
  array run side by side but never next to one of the above, and also locks
  `.data_pipeline.slice-I-of-N.lock` exclusively, so one slice never runs twice. A task whose
  `slice.count` differs from that of a running task (their shards overlap) is refused.

The holder writes who it is (host, pid, Slurm job and array task, start time, stage, command)
into the file it locks exclusively, so a refused job names it (OutputError, exit 2). The OS
drops a lock when its process ends, also by SIGKILL or a node crash on a local disk, so a
killed job never blocks the next one: a lock file still holding a record when its lock is
taken was left by a job that is gone, which is logged, and the file is reused. On a normal
exit the exclusive holder deletes its file; a job checks after locking that the path still
names the file it locked, so a deletion never lets two jobs in. Forked children (the tokenizer
pool, the training child) close their copies of the lock files and never hold a lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from data_pipeline.diskspace import disk_full_guard, disk_full_message, is_disk_full
from data_pipeline.errors import DiskFullError, OutputError

log = logging.getLogger(__name__)
LOCK_FILE = ".data_pipeline.lock"
"""The lock of the whole output dir (exclusive, or shared by the tasks of a Slurm array)."""
SLICE_GLOB = ".data_pipeline.slice-*-of-*.lock"
"""The per-slice locks of a Slurm array's tasks."""
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
"""flock errors of a file system without locks (e.g. Lustre mounted without `flock`)."""
_HELD: set[int] = set()
"""File descriptors of the locks this process holds (closed in forked children)."""


def _close_in_child() -> None:
    """After a fork, in the child: drop its copies of the lock files (the parent keeps them)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent keeps its lock
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def slice_lock_name(index: int, count: int) -> str:
    """File name of the lock of slice `index` of `count`."""
    return f".data_pipeline.slice-{index}-of-{count}.lock"


def holder_record(stage: str, index: int, count: int) -> dict[str, Any]:
    """Who this job is: written into the lock file it holds exclusively."""
    record: dict[str, Any] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stage": stage,
        "slice": f"{index}/{count}",
    }
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        if key in os.environ:
            record[key.lower()] = os.environ[key]
    record["command"] = " ".join(sys.argv)[:400]
    return record


def describe(record: dict[str, Any] | None) -> str:
    """A holder record in one line, e.g. `host n1 pid 42 (Slurm job 7), stage=all ...`."""
    if not record:
        return "a job that has not written its details yet (it is just starting)"
    if "host" not in record:
        return f"an unreadable lock record {record.get('raw', '')[:80]!r}"
    slurm = ""
    if "slurm_job_id" in record:
        array = record.get("slurm_array_job_id"), record.get("slurm_array_task_id")
        task = f", array task {array[0]}_{array[1]}" if all(array) else ""
        slurm = f" (Slurm job {record['slurm_job_id']}{task})"
    return (
        f"host {record['host']} pid {record['pid']}{slurm}, stage={record.get('stage')} slice "
        f"{record.get('slice')}, started {record.get('started')}: {record.get('command', '')}"
    )


def _read_record(fd: int) -> dict[str, Any] | None:
    """The holder record in the open lock file `fd` (None when it is empty)."""
    text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {"raw": text}
    return record if isinstance(record, dict) else {"raw": text}


def _record_at(path: Path) -> dict[str, Any] | None:
    """The holder record in the lock file `path` (None when it is empty or missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd` (its last holder may have deleted it)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _open(path: Path) -> int:
    """`path` opened read-write (created if missing); DiskFullError/OutputError when it cannot."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(e, path, "the lock file")) from e
        raise OutputError(f"cannot create the lock file {path} ({e.strerror or e})") from e


class OutputLock:
    """The locks of one job on its output dir; a context manager (see the module doc)."""

    def __init__(self, out: Path, stage: str, index: int, count: int) -> None:
        self.out = out
        self.index, self.count = index, count
        self.sliced = stage == "all" and count > 1
        self.record = holder_record(stage, index, count)
        self.held: list[tuple[int, Path, bool]] = []
        """(fd, path, delete on release) of every lock taken, in order."""

    def __enter__(self) -> OutputLock:
        try:
            self._acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire(self) -> None:
        main = self.out / LOCK_FILE
        if not self.sliced:
            fd = self._take(main, fcntl.LOCK_EX)
            self._claim(fd, main)
            self._remove_slice_locks()
            return
        fd = self._take(main, fcntl.LOCK_SH)
        self.held.append((fd, main, False))
        stale = _read_record(fd)
        if stale:  # an exclusive holder was killed; no other can hold it while we share it
            log.warning("%s was left by %s, which is gone; reusing it", main, describe(stale))
            os.ftruncate(fd, 0)
        path = self.out / slice_lock_name(self.index, self.count)
        self._claim(self._take(path, fcntl.LOCK_EX), path)
        self._check_slice_counts()

    def _take(self, path: Path, mode: int) -> int:
        """fd of `path` locked with `mode`; OutputError naming the holder when it is taken."""
        for _ in range(100):
            fd = _open(path)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(self._busy(path)) from None
            except OSError as e:
                if e.errno not in NO_LOCKS:
                    os.close(fd)
                    raise
                log.warning(
                    "the file system of %s does not support file locks (%s): another job "
                    "writing this dir at the same time is not detected",
                    self.out,
                    e.strerror,
                )
            if _same_file(fd, path):
                _HELD.add(fd)
                return fd
            os.close(fd)  # deleted by its last holder in between: lock the new file
        raise OutputError(f"{path} keeps being replaced; is another job starting and ending?")

    def _claim(self, fd: int, path: Path) -> None:
        """Log a leftover record of a killed holder, then write ours into `path`."""
        self.held.append((fd, path, True))
        stale = _read_record(fd)
        if stale:
            log.warning(
                "lock file %s was left by %s; that job is gone (the OS released its lock), "
                "so the lock is reused",
                path,
                describe(stale),
            )
        with disk_full_guard(path, "the lock file"):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.record) + "\n").encode(), 0)

    def _busy(self, path: Path) -> str:
        """The refusal message: who holds `path` (for a shared lock, the slice holders)."""
        holders = [_record_at(path)]
        if path.name == LOCK_FILE and not holders[0]:  # shared: the tasks of a Slurm array
            slices = [_record_at(p) for p in sorted(self.out.glob(SLICE_GLOB))]
            holders = [r for r in slices if r] or holders
        who = "; ".join(describe(r) for r in holders)
        what = "this slice" if path.name != LOCK_FILE else "this output dir"
        return (
            f"output.dir={str(self.out)!r}: {what} is being written by another data_pipeline "
            f"job ({who}). Two jobs writing one dir corrupt each other, so this one stops "
            f"before writing anything: wait for that job to end, or use another output.dir. "
            f"The lock is {path}; the OS releases it when its holder exits, even if killed."
        )

    def _check_slice_counts(self) -> None:
        """OutputError when a task of another slice.count is running (its shards overlap)."""
        mine = slice_lock_name(self.index, self.count)
        for path in sorted(self.out.glob(SLICE_GLOB)):
            if path.name == mine or path.name.endswith(f"-of-{self.count}.lock"):
                continue
            if _locked_by_other(path):
                raise OutputError(
                    f"output.dir={str(self.out)!r}: slice {self.index}/{self.count} cannot run "
                    f"next to {describe(_record_at(path))}, a task with another slice.count: "
                    "their shards overlap. All tasks of one array must use the same slice.count."
                )

    def _remove_slice_locks(self) -> None:
        """Delete the slice locks of finished or killed array tasks (none can run now)."""
        for path in sorted(self.out.glob(SLICE_GLOB)):
            stale = _record_at(path)
            if stale:
                log.warning("removing %s, left by %s, which is gone", path.name, describe(stale))
            path.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete the files locked exclusively (while still locked), then unlock everything."""
        while self.held:
            fd, path, delete = self.held.pop()
            try:
                if delete and _same_file(fd, path):
                    path.unlink()
            except OSError as e:
                log.warning("cannot remove the lock file %s (%s)", path, e.strerror)
            finally:
                _HELD.discard(fd)
                os.close(fd)


def _locked_by_other(path: Path) -> bool:
    """Whether another process holds the lock of `path` (a non-blocking shared try)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
