"""Input listing: files, globs, folders and Hugging Face datasets -> `Source`s, in a fixed order.

Each file's kind (jsonl | text | parquet) and compression is decided here from its suffix (or
input.format); a JSON document given as JSON Lines is refused before any work starts. Reading
the records of a source is `data_pipeline.readers`.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.config import INSTRUCT_FORMATS, InputConfig
from data_pipeline.errors import ConfigError
from data_pipeline.fields import check_columns
from data_pipeline.hf import check_hub_reachable, is_saved_hf_dataset, open_hf_dataset
from data_pipeline.streams import BOM, open_binary

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
HF_PREFIX = "hf:"
UNSUPPORTED = (".bz2", ".xz", ".lzma", ".lz4", ".zip", ".tar", ".tgz", ".7z", ".rar", ".br")
"""Suffixes of compressed files and archives that would otherwise be read as binary text."""


@dataclass(frozen=True)
class Source:
    """One input: a file or a Hugging Face dataset."""

    path: str
    """Absolute file path, or the dataset name/dir for kind=hf."""
    kind: str
    """jsonl | text | parquet | hf | pyfuncs (Python source read as prompt/completion pairs)."""
    size: int
    """Bytes on disk (compressed size for .gz/.zst); drives the shard plan."""
    compression: str | None = None
    """gz | zst | None."""
    line_records: bool = True
    """Whether each line is a record (jsonl, text with text_unit=line)."""
    rows: int = 0
    """Number of rows (parquet, hf)."""

    @property
    def splittable(self) -> bool:
        """Whether a byte range of this source can be read without the rest."""
        if self.compression is not None:
            return False
        return self.kind in ("parquet", "hf") or self.line_records

    @property
    def record_kind(self) -> str:
        """How records.parse_record reads this source's payloads: jsonl | line | text | value."""
        if self.kind in ("parquet", "hf"):
            return "value"
        if self.kind == "pyfuncs":
            return "pairs"
        if self.kind == "jsonl":
            return "jsonl"
        return "line" if self.line_records else "text"

    def label(self, number: int | None) -> str:
        """`path:line` (or `path:row`) used in error messages and manifest examples."""
        return self.path if number is None else f"{self.path}:{number}"


def _file_kind(path: Path, fmt: str) -> tuple[str, str | None]:
    """(kind, compression) of a file from its suffixes, or from input.format when not auto."""
    suffixes = [s.lower() for s in path.suffixes]  # DATA.JSONL.GZ too
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) >= 2 else path.suffix.lower()
    if bad := {inner, suffixes[-1] if suffixes else ""} & set(UNSUPPORTED):  # .tar.gz too
        raise ConfigError(
            f"input.paths: {path} is a {bad.pop()} archive/compressed file, which is not read "
            "(only .gz and .zst streams are). Decompress or recompress it with gzip or zstd, or "
            f"leave it out of a listed folder with input.exclude=['*{path.suffix}']."
        )
    if fmt in INSTRUCT_FORMATS:
        return _instruct_file_kind(path, fmt, inner), compression
    if fmt != "auto":
        return fmt, compression
    if inner in JSONL_SUFFIXES:
        return "jsonl", compression
    if inner == ".parquet":
        return "parquet", None
    return "text", compression


def _instruct_file_kind(path: Path, fmt: str, inner: str) -> str:
    """jsonl | parquet for an instruction file (ConfigError for any other file)."""
    if inner in JSONL_SUFFIXES:
        return "jsonl"
    if inner == ".parquet":
        return "parquet"
    raise ConfigError(
        f"input.format={fmt}: {path} is neither JSON Lines (.jsonl/.json/.ndjson, optionally "
        ".gz/.zst) nor parquet. Convert it, or leave it out with input.include/input.exclude."
    )


def is_heldout(rel_path: str, fraction: float) -> bool:
    """Whether a file (module) belongs to the held-out split: the first 8 bytes of the sha256 of
    its relative path, as a fraction of 2**64, fall below `fraction` (input.subset)."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _in_subset(rel_path: str, inp: InputConfig) -> bool:
    if inp.subset == "all":
        return True
    return is_heldout(rel_path, inp.heldout_fraction) == (inp.subset == "heldout")


def _walk(root: Path, inp: InputConfig) -> list[Path]:
    """Files under `root` kept by input.include/exclude, sorted by relative path. Hidden files
    and folders (.git/, .DS_Store, our own .tmp files) are skipped, like `ls` and globs do."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        # prune excluded folders early (e.g. site-packages/* under the stdlib)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and not any(fnmatch.fnmatch(f"{rel_dir}{d}/", g) for g in inp.exclude)
        ]
        for name in filenames:
            rel = rel_dir + name
            if name.startswith("."):
                continue
            if not any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) for g in inp.include):
                continue
            if any(fnmatch.fnmatch(rel, g) for g in inp.exclude):
                continue
            if os.path.isfile(os.path.join(dirpath, name)):
                found.append((rel, root / rel))
    return [p for _, p in sorted(found)]


def _expand_path(entry: str, inp: InputConfig) -> list[tuple[str, Path]]:
    """(relative path, path) of the files one input.paths entry stands for (a file, a glob or a
    folder); the relative path is the file name for a file or a glob match."""
    if entry == "stdlib:":
        entry = sysconfig.get_paths()["stdlib"]
    path = Path(entry).expanduser()
    if any(ch in entry for ch in "*?[") and not path.exists():  # `a[1].jsonl` may be a name
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise ConfigError(f"input.paths: the glob {entry!r} matches no file")
        return [(p.name, p) for p in found]
    if path.is_dir():
        files = _walk(path, inp)
        if not files:
            raise ConfigError(
                f"input.paths: the folder {entry!r} holds no file matching "
                f"input.include={inp.include} / input.exclude={inp.exclude}"
            )
        return [(p.relative_to(path).as_posix(), p) for p in files]
    if path.is_file():
        return [(path.name, path)]
    raise ConfigError(f"input.paths: {entry!r} does not exist (cwd {os.getcwd()})")


def _hf_source(entry: str, inp: InputConfig) -> Source:
    """A Hugging Face dataset as a Source (rows, size on disk), its text column checked."""
    ds = open_hf_dataset(entry, inp.hf_split)
    check_columns(ds.data.schema, inp, f"{entry} (split {inp.hf_split})")
    size = sum(os.path.getsize(f["filename"]) for f in ds.cache_files) or int(ds.data.nbytes)
    return Source(path=entry, kind="hf", size=max(size, 1), rows=len(ds))


def _file_source(path: Path, inp: InputConfig) -> Source:
    """A file as a Source; parquet schemas and JSON Lines heads are checked here."""
    if inp.python_pairs:  # every listed file is Python source (input.include: *.py)
        kind, compression = "pyfuncs", None
    else:
        kind, compression = _file_kind(path, inp.format)
    rows = 0
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"input.paths: {path} is not a readable parquet file ({e})") from e
        rows = pf.metadata.num_rows
        check_columns(pf.schema_arrow, inp, str(path))
    line_records = kind == "jsonl" or (kind == "text" and inp.text_unit == "line")
    src = Source(str(path.resolve()), kind, path.stat().st_size, compression, line_records, rows)
    if kind == "jsonl":
        _check_not_json_array(src)
    return src


_ARRAY_OF_OBJECTS = re.compile(rb"\[\s*(?:[{\]]|\Z)")
"""The start of a JSON array of objects (`[{`, `[` + newline + `{`, `[]`); a JSONL line such as
`[[[[...` is a bad record of its own (records.py), not a reason to refuse the file."""


def _check_not_json_array(src: Source) -> None:
    """ConfigError for a `[...]` JSON document given as JSON Lines (every line would be bad)."""
    try:
        with open_binary(src.path, src.compression) as f:
            head = f.read(4096).removeprefix(BOM).lstrip()
    except Exception:  # a corrupt stream is reported per record (unreadable_file) when read
        return
    what = "a JSON array" if _ARRAY_OF_OBJECTS.match(head) else None
    if head.split(b"\n", 1)[0].strip() == b"{":
        what = "a pretty-printed JSON object spread over several lines"
    if what:
        raise ConfigError(
            f"input.paths: {src.path} holds {what}, not JSON Lines (one object per line). "
            f"Convert it, e.g. `jq -c '.[]' {src.path} > data.jsonl` (`jq -c .` for an "
            "object), and pass that file."
        )


OUTPUT_FILES = ("manifest.json", "tokenizer.model", "tokenizer.train.json", "shard_*")
"""Names of the files the job writes into output.dir (see prepare.py)."""


def _is_our_output(path: Path, output_dir: Path | None) -> bool:
    """Whether `path` is a file this job writes into output_dir."""
    return path.parent == output_dir and any(fnmatch.fnmatch(path.name, g) for g in OUTPUT_FILES)


def list_sources(inp: InputConfig, output_dir: Path | None = None) -> list[Source]:
    """All inputs in a deterministic order (paths in the given order, folders sorted).

    The files this job writes into `output_dir` (placed in an input folder) are never inputs.
    """
    sources: list[Source] = []
    seen: set[str] = set()
    ours = 0
    for entry in inp.paths:
        local = Path(entry).expanduser()
        if entry.startswith(HF_PREFIX) or inp.format == "hf":
            if inp.subset != "all":
                raise ConfigError(f"input.subset={inp.subset} splits files; {entry} is a dataset")
            name = entry.removeprefix(HF_PREFIX)
            if Path(name).expanduser().exists():
                name = str(Path(name).expanduser().resolve())
            elif name.startswith(("/", "./", "../", "~")):  # a path, never a hub name
                raise ConfigError(f"input.paths: {entry!r} does not exist (cwd {os.getcwd()})")
            else:
                check_hub_reachable(name)
            sources.append(_hf_source(name, inp))
            continue
        if inp.format in ("auto", "hf") and is_saved_hf_dataset(local):
            sources.append(_hf_source(str(local.resolve()), inp))
            continue
        for rel, path in _expand_path(entry, inp):
            key = str(path.resolve())
            if not _in_subset(rel, inp):
                continue
            if _is_our_output(Path(key), output_dir):
                ours += 1
            elif key in seen:
                log.warning("input.paths: %s is listed twice (or via a link); read once", path)
            else:
                seen.add(key)
                sources.append(_file_source(path, inp))
    if not sources and inp.subset != "all":
        raise ConfigError(
            f"input.subset={inp.subset}: no input file falls in this split "
            f"(input.heldout_fraction={inp.heldout_fraction}); give more files or another fraction"
        )
    if ours:
        log.warning(
            "input.paths: %d files written by this job in %s are not read", ours, output_dir
        )
    return sources
