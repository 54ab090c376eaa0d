"""Sweep points: which keys a multirun sweeps, each point's name, run dir and record.

A point is named by its swept keys only, sorted, `key=value` joined by `,` (for example
`model=gpt2-125m,optim.lr=0.0003`), so a re-run or requeued sweep finds every point's run dir
again and never trains in a sibling's. The fixed overrides of the command line stay out of the
name (they are in the point's `.hydra/overrides.yaml`).

`point.json` in a point's run dir is its status for the sweep report and for re-runs:
queued | running | finished | stopped (train.stop_at_step) | failed | preempted, with the
exit code and a one-line error. Written atomically (temporary name, then rename) by the
process that knows the status.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

POINT_FILE = "point.json"
NO_SWEPT_KEYS = "default"
"""Name of the one point of a multirun that sweeps no key (`python -m pretrain -m`)."""
_MAX_NAME = 150
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-=,@]")
STATUSES = ("queued", "running", "finished", "stopped", "failed", "preempted")


def override_key(override: str) -> str:
    """The key of a `key=value` override (`+`/`~` prefixes dropped)."""
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(cli_overrides: Iterable[str], sweeper_params: Mapping[str, Any] | None) -> list[str]:
    """Keys with sweep syntax (`a,b`, `range(...)`, `glob(...)`, `choice(...)`) on the command
    line or in `hydra.sweeper.params` (the ready `sweep=` configs), sorted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    items = [o for o in cli_overrides if "=" in o and not o.startswith("hydra.")]
    items += [f"{k}={v}" for k, v in (sweeper_params or {}).items()]
    keys = set()
    for override in parser.parse_overrides(items):
        if override.is_sweep_override():
            keys.add(override.get_key_element().lstrip("+~"))
    return sorted(keys)


def _clean(value: str) -> str:
    return _UNSAFE.sub("_", value.strip("'\"")) or "_"


def point_name(job_overrides: Iterable[str], swept: Iterable[str]) -> str:
    """`k1=v1,k2=v2` of this job's values of the swept keys (filesystem-safe, bounded)."""
    wanted = set(swept)
    parts = {}
    for override in job_overrides:
        key = override_key(override)
        if key in wanted:
            parts[key] = _clean(override.split("=", 1)[1] if "=" in override else "")
    if not parts:
        return NO_SWEPT_KEYS
    name = ",".join(f"{k}={parts[k]}" for k in sorted(parts))
    if len(name) > _MAX_NAME:  # a file name is at most 255 bytes; keep it readable and unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}~{digest}"
    return name


def user_run_dir(job_overrides: Iterable[str]) -> str | None:
    """`run.dir` given on the command line for this job, if any."""
    for override in job_overrides:
        if override_key(override) == "run.dir":
            return override.split("=", 1)[1].strip("'\"")
    return None


@dataclass
class PointRecord:
    """The content of `<point run dir>/point.json`."""

    point: str
    status: str
    overrides: list[str] = field(default_factory=list)
    max_steps: int | None = None
    exit_code: int | None = None
    error: str | None = None
    job_id: str | None = None
    run_dir: str = ""
    updated: str = ""


def read_point(run_dir: str | Path) -> PointRecord | None:
    """The point's record, or None (missing or unreadable: the report derives a status)."""
    try:
        data = json.loads((Path(run_dir) / POINT_FILE).read_text(encoding="utf-8"))
        known = PointRecord.__dataclass_fields__
        return PointRecord(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def write_point(run_dir: str | Path, record: PointRecord) -> None:
    """Write `point.json` atomically (temporary name in the same dir, then rename)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.run_dir = str(run_dir)
    record.updated = time.strftime("%Y-%m-%dT%H:%M:%S")
    tmp = run_dir / f".{POINT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / POINT_FILE)


def update_point(run_dir: str | Path, **changes: Any) -> None:
    """Change fields of an existing record (no record: nothing to update)."""
    record = read_point(run_dir)
    if record is None:
        return
    for key, value in changes.items():
        setattr(record, key, value)
    write_point(run_dir, record)


def point_status(exit_code: int, to_the_end: bool) -> str:
    """A point's status from its training's exit code: finished (or stopped, when
    train.stop_at_step ended it before max_steps), preempted (75) or failed."""
    from pretrain.faults import EXIT_PREEMPTED

    if exit_code == 0:
        return "finished" if to_the_end else "stopped"
    return "preempted" if exit_code == EXIT_PREEMPTED else "failed"


def is_finished(run_dir: str | Path, max_steps: int) -> bool:
    """The point trained to `max_steps` before (its record says finished at that length)."""
    record = read_point(run_dir)
    return record is not None and record.status == "finished" and record.max_steps == max_steps


def short_error(text: str, limit: int = 300) -> str:
    """The last non-empty line of an error text, bounded (for point.json and tables)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
