"""A full disk or quota, said as such: ENOSPC/EDQUOT from any write becomes a DiskFullError.

Without this a full output disk surfaced as a raw OSError traceback from inside megatron's
IndexedDatasetBuilder (or, later, as a confusing follow-up error), never saying that the disk
was full or how much room was left. `disk_full_guard(path, what)` wraps every write into the
output dir: shards (also errors a pool worker re-raises in the parent), the tokenizer, the done
records, the manifest and the lock file.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data_pipeline.errors import DiskFullError

FULL_ERRNOS = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
}
"""errno values of a write that failed for lack of room, and how the message says it."""


def free_bytes(path: Path) -> int | None:
    """Free bytes (for this user) on the file system of `path` or its nearest existing parent."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _amount(size: int | None) -> str:
    if size is None:
        return "unknown"
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size} bytes"


def disk_full_message(error: OSError, path: Path, what: str) -> str:
    """What failed, where, and how much room is left; what was kept and how to resume."""
    free = _amount(free_bytes(path.parent))
    quota = " (a quota may allow less)" if error.errno == errno.EDQUOT else ""
    return (
        f"{FULL_ERRNOS[error.errno]} while writing {what} {path}: {free} free on that file "
        f"system{quota}. Completed shards are kept and no manifest.json was written; free space "
        "(or raise the quota) and rerun the same command to resume."
    )


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is an OSError of a full disk or quota."""
    return isinstance(error, OSError) and error.errno in FULL_ERRNOS


@contextmanager
def disk_full_guard(path: Path, what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into a DiskFullError naming `path`."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFullError(disk_full_message(e, Path(path), what)) from e
