"""Checksums of checkpoint files, and the checks that tell a damaged checkpoint from a good one.

**Checksums.** Every save records `checksums.json` (`{"algorithm": "sha256", "files":
{name: {"size", "sha256"}}}`) inside the checkpoint before it is committed (renamed): every rank
hashes the shards it wrote itself (`__<rank>_*.distcp`, still in its page cache), rank 0 the
other files (`.metadata`, `common.pt`, `metadata.json`, `meta.json`, `tokenizer.model`);
`config.yaml` (for people) is not covered. sha256 is the data pipeline's hash too; with SHA-NI
one core hashes ~1-2 GB/s, and the work is spread over the ranks (`bench/checkpoint.py`
measures it).

**Verification** (`inspect`, collective, before a load): on every rank the cheap checks (each
file present, not truncated against `.metadata` and `checksums.json`, `meta.json` with its keys,
a valid `metadata.json`, `common.pt` and `.metadata` readable by the restricted loaders of
`safety`); then, with `checkpoint.verify_checksums`, the files' hashes, split across ranks by
size. The ranks' findings are gathered, so every rank raises the same `DamagedCheckpoint`
(naming each damaged file) or `UnsafeCheckpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pretrain.checkpoint import collective, finite, layout, meta, safety
from pretrain.checkpoint.collective import all_gather, broadcast
from pretrain.checkpoint.errors import CheckpointError, DamagedCheckpoint, UnsafeCheckpoint

log = logging.getLogger("pretrain.checkpoint")

CHECKSUMS_FILE = "checksums.json"
"""Per-file sizes and sha256 digests, written into a checkpoint before it is committed."""
ALGORITHM = "sha256"
"""The digest used for checksums.json."""
UNHASHED = frozenset({CHECKSUMS_FILE, "config.yaml"})
"""Files of a checkpoint that have no checksum (checksums.json itself; config.yaml, for people)."""
_BLOCK = 8 << 20
_OWN_SHARD = re.compile(r"^__(\d+)_\d+\.distcp$")


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 8 MiB blocks (hashlib releases the GIL: threads overlap)."""
    digest = hashlib.new(ALGORITHM)
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _hash_all(paths: list[Path]) -> dict[str, dict[str, Any]]:
    def one(path: Path) -> tuple[str, dict[str, Any]]:
        return path.name, {"size": path.stat().st_size, ALGORITHM: file_digest(path)}

    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=min(4, len(paths))) as pool:
        return dict(pool.map(one, paths))


# ---- save side ----------------------------------------------------------------------------


def saved_by(name: str, rank: int, world: int) -> bool:
    """Whether `rank` hashes file `name` at save: its own shards; rank 0 also all the rest."""
    match = _OWN_SHARD.match(name)
    owner = int(match.group(1)) if match else 0
    return owner == rank or (rank == 0 and not 0 <= owner < world)


def record_checksums(tmp: Path) -> OSError | None:
    """Hash the files of the checkpoint being written into `tmp`; rank 0 writes checksums.json.

    Collective; call after every rank finished writing. Returns the write/read error of this
    rank's part (every rank gets a hashing failure of any rank), None when recorded.
    """
    rank, size = collective.world()
    listing: list[str] | None = None
    failure: tuple[str, int | None] | None = None
    if rank == 0:
        try:
            listing = sorted(p.name for p in tmp.iterdir())
        except OSError as exc:
            listing, failure = [], (str(exc), exc.errno)
    names = broadcast(listing)
    mine = [tmp / n for n in names if n not in UNHASHED and saved_by(n, rank, size)]
    part: dict[str, dict[str, Any]] = {}
    try:
        part = _hash_all(mine)
    except OSError as exc:
        failure = failure or (str(exc), exc.errno)
    files: dict[str, dict[str, Any]] = {}
    failures = []
    for hashed, failed in all_gather((part, failure)):
        files.update(hashed)
        failures += [failed] if failed else []
    if failures:
        return OSError(failures[0][1], failures[0][0])
    return _write_checksums(tmp, files) if rank == 0 else None


def _write_checksums(tmp: Path, files: dict[str, dict[str, Any]]) -> OSError | None:
    record = {"algorithm": ALGORITHM, "files": dict(sorted(files.items()))}
    try:
        with open(tmp / CHECKSUMS_FILE, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(record, indent=1) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc
    return None


# ---- load side ----------------------------------------------------------------------------


def read_checksums(ckpt_dir: Path) -> dict[str, dict[str, Any]] | None:
    """checksums.json's `files` (None when the checkpoint has none: saved by older code)."""
    path = ckpt_dir / CHECKSUMS_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        files = record["files"]
        if record.get("algorithm") != ALGORITHM or not isinstance(files, dict):
            raise ValueError(f"expected algorithm {ALGORITHM!r} and a `files` table")
        return {str(k): dict(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc


def _mcore_marker_problem(ckpt_dir: Path) -> str | None:
    path = ckpt_dir / layout.MCORE_META_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "sharded_backend" not in config:
            raise ValueError("no sharded_backend")
    except (OSError, ValueError) as exc:
        return f"{path}: missing or invalid ({exc})"
    return None


def _shard_problems(ckpt_dir: Path) -> list[str]:
    """`.metadata` readable and safe; every shard it names present and long enough."""
    index = ckpt_dir / ".metadata"
    if not index.is_file():
        return [f"{index}: missing"]
    metadata = safety.read_dcp_metadata(index)
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(end, needed.get(info.relative_path, 0))
    problems = []
    for name, end in sorted(needed.items()):
        path = ckpt_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size < end:
            problems.append(f"{path}: truncated ({path.stat().st_size} bytes, needs {end})")
    return problems


def _size_problems(ckpt_dir: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for name, entry in files.items():
        path = ckpt_dir / name
        if "/" in name or name in ("", ".", ".."):
            problems.append(f"{ckpt_dir / CHECKSUMS_FILE}: invalid file name {name!r}")
        elif not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.get("size"):
            size, recorded = path.stat().st_size, entry.get("size")
            problems.append(f"{path}: {size} bytes, {CHECKSUMS_FILE} records {recorded}")
    return problems


def _checked(problems: list[str], check: Any, *args: Any) -> None:
    """Run `check(*args)`; a CheckpointError (not UnsafeCheckpoint) becomes a problem line."""
    try:
        found = check(*args)
    except UnsafeCheckpoint:
        raise
    except CheckpointError as exc:
        problems.append(str(exc))
        return
    if isinstance(found, str):
        problems.append(found)
    elif isinstance(found, list):
        problems.extend(found)


def structure_problems(ckpt_dir: Path) -> tuple[list[str], dict[str, dict[str, Any]] | None]:
    """The cheap checks of one checkpoint (see the module docstring); UnsafeCheckpoint raises."""
    problems: list[str] = []
    _checked(problems, meta.read_meta, ckpt_dir)
    _checked(problems, _mcore_marker_problem, ckpt_dir)
    common = ckpt_dir / "common.pt"
    if common.is_file():
        _checked(problems, safety.check_common, common)
    else:
        problems.append(f"{common}: missing")
    _checked(problems, _shard_problems, ckpt_dir)
    files = None
    try:
        files = read_checksums(ckpt_dir)
    except CheckpointError as exc:
        problems.append(str(exc))
    if files is not None:
        problems += [p for p in _size_problems(ckpt_dir, files) if p not in problems]
    return problems, files


def share(files: dict[str, dict[str, Any]], rank: int, world: int) -> list[str]:
    """The files `rank` hashes at a verification: greedy by size, the same split on every rank."""
    loads = [0] * world
    mine = []
    for name in sorted(files, key=lambda n: (-int(files[n].get("size") or 0), n)):
        target = loads.index(min(loads))
        loads[target] += int(files[name].get("size") or 0)
        if target == rank:
            mine.append(name)
    return mine


def digest_problems(
    ckpt_dir: Path, files: dict[str, dict[str, Any]], names: list[str]
) -> list[str]:
    """Files among `names` whose sha256 differs from checksums.json."""
    present = [ckpt_dir / n for n in names if (ckpt_dir / n).is_file()]
    actual = _hash_all(present)
    return [
        f"{ckpt_dir / name}: {ALGORITHM} mismatch (its content changed after the save)"
        for name, entry in sorted(actual.items())
        if entry[ALGORITHM] != files[name].get(ALGORITHM)
    ]


def _one_per_file(problems: list[str]) -> list[str]:
    """The first problem found for each file (each line starts with the file's path)."""
    seen: set[str] = set()
    kept = []
    for problem in problems:
        where = problem.split(": ", 1)[0]
        if where not in seen:
            seen.add(where)
            kept.append(problem)
    return kept


def local_findings(ckpt_dir: Path, checksums: bool) -> dict[str, Any]:
    """This rank's share of `inspect`: {"problems": [...], "unsafe": str | None, "summed": bool}."""
    rank, size = collective.world()
    try:
        problems, files = structure_problems(ckpt_dir)
    except UnsafeCheckpoint as exc:
        return {"problems": [], "unsafe": str(exc), "summed": False}
    if checksums and files is not None:
        flagged = {p.split(": ", 1)[0] for p in problems}
        names = [n for n in share(files, rank, size) if str(ckpt_dir / n) not in flagged]
        problems += digest_problems(ckpt_dir, files, names)
    return {"problems": _one_per_file(problems), "unsafe": None, "summed": files is not None}


def inspect(ckpt_dir: Path, checksums: bool = True) -> None:
    """Raise DamagedCheckpoint / UnsafeCheckpoint for `ckpt_dir` on every rank (collective)."""
    findings = all_gather(local_findings(ckpt_dir, checksums))
    unsafe = [f["unsafe"] for f in findings if f["unsafe"]]
    if unsafe:
        raise UnsafeCheckpoint(unsafe[0])
    problems: list[str] = []
    for found in findings:
        problems += [p for p in found["problems"] if p not in problems]
    if problems:
        raise DamagedCheckpoint(ckpt_dir, problems)
    if collective.world()[0] != 0:
        return
    if not findings[0]["summed"]:
        log.warning(
            "%s has no %s (saved by an older version): not verified", ckpt_dir, CHECKSUMS_FILE
        )
    elif not checksums:
        log.info("%s: checksums not verified (checkpoint.verify_checksums=false)", ckpt_dir)


def read_tensors(request: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
    """`dist_checkpointing.load` of a tensor-only `request`, guarded (collective).

    Byte entries and foreign pickles are refused (`safety`); a read failure or NaN/Inf in what
    was read is a DamagedCheckpoint naming the checkpoint, the same on every rank.
    """
    from megatron.core import dist_checkpointing

    safety.check_request(request)
    guard = None
    try:
        with safety.guarded_load() as guard:
            loaded = dist_checkpointing.load(request, str(ckpt_dir))
    except collective.FAILURES as exc:
        if guard is not None and guard.refusal is not None:
            raise guard.refusal from exc
        log.debug("reading %s failed", ckpt_dir, exc_info=exc)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
        raise DamagedCheckpoint(ckpt_dir, [f"reading its tensors failed ({why})"]) from exc
    bad = finite.gathered_names(finite.nonfinite_names(finite.tensors_of(loaded)))
    if bad:
        raise DamagedCheckpoint(ckpt_dir, [f"non-finite values (NaN/Inf) in {', '.join(bad)}"])
    return loaded
