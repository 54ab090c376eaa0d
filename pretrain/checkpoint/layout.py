"""On-disk layout of a run's checkpoints: names, the `latest` marker, completeness, rotation.

```
${run.dir}/
  iter_0000100/             a complete checkpoint (renamed from its temporary name when done)
  iter_0000200/
  iter_0000300.tmp-incomplete/   a save in progress, or one killed mid-write (never loaded)
  iter_0000400.damaged/     a checkpoint found damaged at a resume (kept; never loaded/rotated)
  latest                    text: "iter_0000200\n", replaced atomically, written last
```

A checkpoint is *complete* when its directory has its final name and contains both megatron's
`metadata.json` and our `meta.json`. Only rank 0 touches the marker and renames directories,
after a barrier that guarantees every rank finished writing. Pure filesystem code, no torch.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

LATEST_FILE = "latest"
"""Name of the marker file holding the newest complete checkpoint's directory name."""
META_FILE = "meta.json"
"""Our metadata file (step, layout, model config, manifests); written into every checkpoint."""
MCORE_META_FILE = "metadata.json"
"""megatron-core's own marker (backend and version), written when its save completed."""
TMP_SUFFIX = ".tmp-incomplete"
"""Suffix of a checkpoint directory that is still being written (or was torn by a crash)."""
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


def iter_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after `step` optimizer steps."""
    return f"iter_{step:07d}"


def step_of(path: Path) -> int | None:
    """The step encoded in a checkpoint directory name, or None if it is not one."""
    match = _ITER_RE.match(path.name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """True when `path` is a finished checkpoint directory (final name and both markers)."""
    return (
        step_of(path) is not None
        and path.is_dir()
        and (path / MCORE_META_FILE).is_file()
        and (path / META_FILE).is_file()
    )


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename) to disk; best effort on filesystems without it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old or the new content, never a torn file."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_latest(run_dir: Path, name: str) -> None:
    """Point `${run_dir}/latest` at checkpoint directory `name` (atomic replace)."""
    atomic_write_text(run_dir / LATEST_FILE, name + "\n")


def read_latest(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, if the marker exists and names a complete checkpoint.

    When the marker is missing or stale (its target is gone or torn), fall back to the newest
    complete `iter_*` directory, so a crash between the rename and the marker write loses nothing.
    """
    marker = run_dir / LATEST_FILE
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip()
        candidate = run_dir / name
        if name and "/" not in name and is_complete(candidate):
            return candidate
        log.warning("%s names %r, which is not a complete checkpoint; scanning", marker, name)
    complete = list_complete(run_dir)
    return complete[-1] if complete else None


def list_complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints in `run_dir`, oldest first (by step)."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if is_complete(p)]
    return sorted(found, key=lambda p: step_of(p) or 0)


def resolve_load_path(path: Path, key: str = "checkpoint.load") -> Path:
    """Accept a checkpoint directory, a run directory or its `latest` file; error otherwise.

    `key` is the config key named in the error (`checkpoint.load`, or `checkpoint` for export).
    """
    path = path.expanduser()
    if is_complete(path):
        return path
    if path.name == LATEST_FILE and path.is_file():
        path = path.parent
    if path.is_dir() and step_of(path) is None:
        latest = read_latest(path)
        if latest is not None:
            return latest
    if path.name.endswith(TMP_SUFFIX) or (path.is_dir() and step_of(path) is not None):
        raise FileNotFoundError(
            f"{key}={path} is an incomplete checkpoint (a save was interrupted; it lacks "
            f"{MCORE_META_FILE} or {META_FILE}). Use an earlier iter_* directory."
        )
    what = "does not exist" if not path.exists() else "has no complete checkpoint"
    raise FileNotFoundError(
        f"{key}={path} {what} (expected an iter_XXXXXXX "
        "directory with metadata.json and meta.json, or a run directory with a `latest` file)"
    )


def remove_stale_tmp(run_dir: Path, keep: str | None = None) -> list[Path]:
    """Delete torn `*.tmp-incomplete` directories left by killed saves (rank 0, between saves)."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for path in run_dir.iterdir():
        if path.name.endswith(TMP_SUFFIX) and path.name != keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def rotate(run_dir: Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (0 = keep all).

    `protect` (the one `latest` names) is never deleted. Deletion first renames the directory
    to a temporary name, so a crash mid-delete never leaves a half-deleted `iter_*` behind.
    """
    if keep_last <= 0:
        return []
    complete = list_complete(run_dir)
    doomed = [p for p in complete[:-keep_last] if protect is None or p != protect]
    for path in doomed:
        trash = path.with_name(path.name + ".deleting" + TMP_SUFFIX)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


DAMAGED_SUFFIX = ".damaged"
"""Suffix a damaged checkpoint is renamed to: kept for inspection, never loaded or rotated."""


def set_aside(path: Path) -> Path:
    """Rename checkpoint `path` to `<name>.damaged` (or `.damaged-N`); returns the new path."""
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    count = 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}-{count}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target
