"""A checkpoint that cannot be written: say why (disk full above all), clean up, keep the rest.

Failed writes surface from deep inside torch and megatron, often without their errno: a full
disk shows up as `CheckpointException ... unexpected pos 704 vs 598` (torch's zip writer after
a short write). `write_failed` turns any write failure into a `CheckpointWriteError` (exit 74)
whose message says whether the disk is full, names the path and the free space, removes the
torn `*.tmp-incomplete` directory (to give the space back) and names the previous checkpoint,
which is untouched: `latest` moves and old checkpoints are rotated only after a commit.
`space_problem` refuses a save up front when the newest checkpoint would not fit again.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from pretrain.checkpoint import layout
from pretrain.checkpoint.errors import CheckpointWriteError

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "file too large", "unexpected pos")
"""Messages of a full disk or quota ("unexpected pos": torch's zip writer after a short write)."""
_LOW_FREE = 1 << 20
"""Free bytes below which a failed write is put down to a full disk whatever its message."""
_MARGIN = 1 << 20
"""Extra free space `space_problem` asks for beyond the size of the newest checkpoint."""


def mib(size: int | None) -> str:
    """`size` bytes as a short human-readable amount."""
    return "unknown" if size is None else f"{size / (1 << 20):.1f} MiB"


def free_bytes(path: Path) -> int | None:
    """Free bytes (for this user) on the filesystem holding `path` or its nearest ancestor."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, its causes/contexts and the per-rank failures of torch CheckpointExceptions."""
    found: list[BaseException] = []
    todo = [exc]
    while todo and len(found) < 50:
        item = todo.pop()
        if item in found:
            continue
        found.append(item)
        for failure in (getattr(item, "failures", None) or {}).values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, BaseException):
                todo.append(inner)
        todo += [e for e in (item.__cause__, item.__context__) if e is not None]
    return found


def disk_full(exc: BaseException, free: int | None) -> bool:
    """Whether a failed write is explained by a full disk or quota."""
    chain = _chain(exc)
    if any(isinstance(e, OSError) and e.errno in _FULL_ERRNOS for e in chain):
        return True
    text = " ".join(str(e) for e in chain).lower()
    return any(t in text for t in _FULL_TEXTS) or (free is not None and free < _LOW_FREE)


def _reason(exc: BaseException) -> str:
    for item in _chain(exc):
        if isinstance(item, OSError) and item.strerror:
            where = f" ({item.filename})" if item.filename else ""
            return f"{item.strerror}{where}"
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def write_failed(run_dir: Path, tmp: Path, exc: BaseException, rank0: bool) -> CheckpointWriteError:
    """The error to raise (already reported on stderr) after writing `tmp` failed with `exc`.

    Rank 0 removes the torn `tmp` so the disk gets its space back; `latest` is untouched.
    """
    free = free_bytes(tmp)
    full = disk_full(exc, free)
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
    previous = layout.read_latest(run_dir)
    what = "the disk is full" if full else _reason(exc)
    detail = f" ({_reason(exc)})" if full else ""
    advice = "Free space (or use a larger run.dir)" if full else "Fix the filesystem"
    return CheckpointWriteError(
        f"cannot write checkpoint {tmp}: {what}{detail}; {mib(free)} free on the filesystem of "
        f"run.dir={run_dir}. The incomplete checkpoint was removed; "
        f"{previous or 'no earlier checkpoint exists, nothing'} is kept as `latest`. "
        f"{advice}, then rerun the same command to resume"
    ).report()


def directory_size(path: Path) -> int:
    """Bytes of the regular files directly inside `path`."""
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def space_problem(run_dir: Path) -> str | None:
    """Why the next checkpoint cannot fit (None when it should): a new save needs as much free
    space as the newest complete checkpoint, which is deleted only after the new one exists."""
    newest = layout.read_latest(run_dir)
    if newest is None:
        return None
    needed, free = directory_size(newest), free_bytes(run_dir)
    if free is None or free >= needed + _MARGIN:
        return None
    return (
        f"the disk is full: a checkpoint needs ~{mib(needed)} (the size of {newest.name}) and "
        f"the filesystem of run.dir={run_dir} has {mib(free)} free. Nothing was written; "
        f"{newest} is kept as `latest`. Free space (or lower checkpoint.keep_last, or use a "
        "larger run.dir), then rerun the same command to resume"
    )
