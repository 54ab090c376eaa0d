"""Input listing and streaming readers: files, globs, folders and Hugging Face datasets.

Readers yield raw records (`(line_or_row, payload)`) of one byte range of a source, so a shard
can be built from any part of any input without reading the rest; they never tokenize.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import io
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.config import InputConfig
from data_pipeline.errors import ConfigError
from data_pipeline.fields import lookup, text_column
from data_pipeline.hf import check_hub_reachable, is_saved_hf_dataset, open_hf_dataset

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst"}
HF_PREFIX = "hf:"
UNSUPPORTED = (".bz2", ".xz", ".lzma", ".lz4", ".zip", ".tar", ".tgz", ".7z", ".rar", ".br")
"""Suffixes of compressed files and archives that would otherwise be read as binary text."""
BOM = b"\xef\xbb\xbf"
"""UTF-8 byte order mark: dropped at the start of a file (editors on Windows write it)."""


@dataclass(frozen=True)
class Source:
    """One input: a file or a Hugging Face dataset."""

    path: str
    """Absolute file path, or the dataset name/dir for kind=hf."""
    kind: str
    """jsonl | text | parquet | hf."""
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
        if self.kind == "jsonl":
            return "jsonl"
        return "line" if self.line_records else "text"

    def label(self, number: int | None) -> str:
        """`path:line` (or `path:row`) used in error messages and manifest examples."""
        return self.path if number is None else f"{self.path}:{number}"


def _file_kind(path: Path, fmt: str) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]  # DATA.JSONL.GZ too
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) >= 2 else path.suffix.lower()
    if bad := {inner, suffixes[-1] if suffixes else ""} & set(UNSUPPORTED):  # .tar.gz too
        raise ConfigError(
            f"input.paths: {path} is a {bad.pop()} archive/compressed file, which is not read "
            "(only .gz and .zst streams are). Decompress or recompress it with gzip or zstd, or "
            f"leave it out of a listed folder with input.exclude=['*{path.suffix}']."
        )
    if fmt != "auto":
        return fmt, compression
    if inner in JSONL_SUFFIXES:
        return "jsonl", compression
    if inner == ".parquet":
        return "parquet", None
    return "text", compression


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


def _expand_path(entry: str, inp: InputConfig) -> list[Path]:
    if entry == "stdlib:":
        entry = sysconfig.get_paths()["stdlib"]
    path = Path(entry).expanduser()
    if any(ch in entry for ch in "*?[") and not path.exists():  # `a[1].jsonl` may be a name
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise ConfigError(f"input.paths: the glob {entry!r} matches no file")
        return found
    if path.is_dir():
        files = _walk(path, inp)
        if not files:
            raise ConfigError(
                f"input.paths: the folder {entry!r} holds no file matching "
                f"input.include={inp.include} / input.exclude={inp.exclude}"
            )
        return files
    if path.is_file():
        return [path]
    raise ConfigError(f"input.paths: {entry!r} does not exist (cwd {os.getcwd()})")


def _hf_source(entry: str, inp: InputConfig) -> Source:
    ds = open_hf_dataset(entry, inp.hf_split)
    text_column(ds.data.schema, inp.text_key, f"{entry} (split {inp.hf_split})")
    size = sum(os.path.getsize(f["filename"]) for f in ds.cache_files) or int(ds.data.nbytes)
    return Source(path=entry, kind="hf", size=max(size, 1), rows=len(ds))


def _file_source(path: Path, inp: InputConfig) -> Source:
    kind, compression = _file_kind(path, inp.format)
    rows = 0
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"input.paths: {path} is not a readable parquet file ({e})") from e
        rows = pf.metadata.num_rows
        text_column(pf.schema_arrow, inp.text_key, str(path))
    line_records = kind == "jsonl" or (kind == "text" and inp.text_unit == "line")
    src = Source(str(path.resolve()), kind, path.stat().st_size, compression, line_records, rows)
    if kind == "jsonl":
        _check_not_json_array(src)
    return src


def _check_not_json_array(src: Source) -> None:
    """ConfigError for a `[...]` JSON document given as JSON Lines (every line would be bad)."""
    try:
        with _open_binary(src) as f:
            head = f.read(4096).removeprefix(BOM).lstrip()
    except Exception:  # a corrupt stream is reported per record (unreadable_file) when read
        return
    what = "a JSON array" if head.startswith(b"[") else None
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
        for path in _expand_path(entry, inp):
            key = str(path.resolve())
            if _is_our_output(Path(key), output_dir):
                ours += 1
            elif key in seen:
                log.warning("input.paths: %s is listed twice (or via a link); read once", path)
            else:
                seen.add(key)
                sources.append(_file_source(path, inp))
    if ours:
        log.warning(
            "input.paths: %d files written by this job in %s are not read", ours, output_dir
        )
    return sources


def _zst_blocks(path: str) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-frame) .zst file; EOFError when a frame is cut off."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj, fed = dctx.decompressobj(), False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                fed = True
                if out := dobj.decompress(chunk):
                    yield out
                chunk = b""
                if dobj.eof:
                    chunk, dobj, fed = dobj.unused_data, dctx.decompressobj(), False
    if fed:
        raise EOFError(f"{path}: zstd frame cut off (truncated file)")


class _ZstdRaw(io.RawIOBase):
    """A readable raw stream over _zst_blocks (so lines and read() work as for plain files)."""

    def __init__(self, path: str) -> None:
        self._blocks = _zst_blocks(path)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = block
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._blocks.close()
        super().close()


def _open_binary(src: Source) -> io.BufferedIOBase:
    if src.compression == "gz":
        return gzip.open(src.path, "rb")  # type: ignore[return-value]
    if src.compression == "zst":
        return io.BufferedReader(_ZstdRaw(src.path), buffer_size=1 << 20)
    return open(src.path, "rb")  # noqa: SIM115


def _count_newlines(path: str, end: int) -> int:
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < end:
            chunk = f.read(min(1 << 22, end - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count


def _iter_lines(src: Source, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    if not src.splittable:
        with _open_binary(src) as f:
            for number, line in enumerate(f, 1):
                yield number, line.removeprefix(BOM) if number == 1 else line
        return
    with open(src.path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # this line started before `start`: it belongs to the previous piece
        pos = f.tell()
        number = _count_newlines(src.path, pos) + 1 if pos else 1
        while pos < end:
            line = f.readline()
            if not line:
                break
            yield number, line.removeprefix(BOM) if pos == 0 else line
            pos += len(line)
            number += 1


def _row_range(src: Source, start: int, end: int) -> tuple[int, int]:
    # row r sits at byte position r * size // rows; keep the rows whose position is in [start, end)
    return -(-start * src.rows // src.size), -(-end * src.rows // src.size)


def _iter_parquet(src: Source, key: str, start: int, end: int) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    first, last = _row_range(src, start, end)
    pf = pq.ParquetFile(src.path)
    column, path = text_column(pf.schema_arrow, key, src.path)
    offset = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        lo, hi = max(first, offset), min(last, offset + n)
        if lo < hi:
            values = pf.read_row_group(group, columns=[column]).column(0).to_pylist()
            for row in range(lo, hi):
                yield row + 1, _dig(values[row - offset], path)
        offset += n


def _dig(value: Any, path: str | None) -> Any:
    return value if path is None else lookup(value, path)


def _iter_hf(src: Source, key: str, split: str, start: int, end: int) -> Iterator[tuple[int, Any]]:
    ds = open_hf_dataset(src.path, split)
    first, last = _row_range(src, start, end)
    column, path = text_column(ds.data.schema, key, src.path)
    for lo in range(first, last, 1000):
        hi = min(lo + 1000, last)
        for i, value in enumerate(ds[lo:hi][column]):
            yield lo + i + 1, _dig(value, path)


@dataclass(frozen=True)
class Unreadable:
    """Payload standing for the rest of a file that cannot be read (truncated .gz, bad parquet)."""

    error: str


def _records(
    src: Source, inp: InputConfig, start: int, end: int
) -> Iterator[tuple[int | None, Any]]:
    if src.kind == "parquet":
        yield from _iter_parquet(src, inp.text_key, start, end)
    elif src.kind == "hf":
        yield from _iter_hf(src, inp.text_key, inp.hf_split, start, end)
    elif src.line_records:
        yield from _iter_lines(src, start, end)
    elif start == 0:
        with _open_binary(src) as f:
            yield None, f.read().removeprefix(BOM)


def iter_records(
    src: Source, inp: InputConfig, start: int = 0, end: int | None = None
) -> Iterator[tuple[int | None, Any]]:
    """Records of `src` starting in bytes [start, end): (line or row number, raw payload).

    Payloads: bytes (a JSONL line, a text line or a whole text file), a table value, or, when
    the file breaks off (e.g. a truncated .gz), one final `Unreadable` numbered after the last
    good record.
    """
    import zstandard

    number = None
    try:
        for number, payload in _records(src, inp, start, src.size if end is None else end):
            yield number, payload
    except ConfigError:
        raise
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as e:  # incl. gzip and pyarrow
        if isinstance(number, int):
            number += 1
        elif src.kind != "text" or src.line_records:
            number = 1
        yield number, Unreadable(f"{e}")
