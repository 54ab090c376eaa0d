"""Streaming readers: the raw records of one byte range of a `Source`, in file order.

Readers yield `(line_or_row, payload)` so a shard can be built from any part of any input without
reading the rest (plain line files are split at byte offsets, parquet and HF datasets at rows;
gzip/zstd streams and whole-file text documents are read from the start); they never tokenize.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from data_pipeline.config import InputConfig
from data_pipeline.errors import ConfigError
from data_pipeline.fields import instruct_columns, lookup, text_column
from data_pipeline.hf import open_hf_dataset
from data_pipeline.listing import Source
from data_pipeline.streams import BOM, open_binary


def _count_newlines(path: str, end: int) -> int:
    """Newlines in the first `end` bytes of a file (the line number of a byte offset)."""
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
    """(line number, raw line) of the lines starting in [start, end) (all, if not splittable)."""
    if not src.splittable:
        with open_binary(src.path, src.compression) as f:
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
    """Rows [first, last) of a table source whose byte position falls in [start, end)."""
    # row r sits at byte position r * size // rows; keep the rows whose position is in [start, end)
    return -(-start * src.rows // src.size), -(-end * src.rows // src.size)


def _iter_parquet(src: Source, inp: InputConfig, start: int, end: int) -> Iterator[tuple[int, Any]]:
    """(row number, text value, or a row dict of instruction columns) of a parquet file's rows
    in the byte range, by row group."""
    import pyarrow.parquet as pq

    first, last = _row_range(src, start, end)
    pf = pq.ParquetFile(src.path)
    if inp.is_instruct():
        columns, path = instruct_columns(inp), None
    else:
        column, path = text_column(pf.schema_arrow, inp.text_key, src.path)
        columns = [column]
    offset = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        lo, hi = max(first, offset), min(last, offset + n)
        if lo < hi:
            table = pf.read_row_group(group, columns=columns)
            values = table.to_pylist() if inp.is_instruct() else table.column(0).to_pylist()
            for row in range(lo, hi):
                yield row + 1, _dig(values[row - offset], path)
        offset += n


def _dig(value: Any, path: str | None) -> Any:
    """The nested field `path` of a struct value (the value itself for None)."""
    return value if path is None else lookup(value, path)


def _iter_hf(src: Source, inp: InputConfig, start: int, end: int) -> Iterator[tuple[int, Any]]:
    """(row number, text value, or a row dict of instruction columns) of a Hugging Face
    dataset's rows in the byte range."""
    ds = open_hf_dataset(src.path, inp.hf_split)
    first, last = _row_range(src, start, end)
    if inp.is_instruct():
        columns = instruct_columns(inp)
        for lo in range(first, last, 1000):
            batch = ds[lo : min(lo + 1000, last)]
            for i, row in enumerate(zip(*(batch[c] for c in columns), strict=True)):
                yield lo + i + 1, dict(zip(columns, row, strict=True))
        return
    column, path = text_column(ds.data.schema, inp.text_key, src.path)
    for lo in range(first, last, 1000):
        hi = min(lo + 1000, last)
        for i, value in enumerate(ds[lo:hi][column]):
            yield lo + i + 1, _dig(value, path)


def _iter_pairs(src: Source, start: int) -> Iterator[tuple[int, Any]]:
    """(line of the def, {prompt, completion}) of a Python file (input.python_pairs); a file
    that does not parse gives one PythonSyntax payload at its error line."""
    from data_pipeline.instruct.stdlib_pairs import python_pairs

    if start > 0:
        return
    with open_binary(src.path, src.compression) as f:
        source = f.read()
    try:
        yield from python_pairs(source)
    except (SyntaxError, ValueError, UnicodeDecodeError) as e:  # also null bytes, bad coding
        yield getattr(e, "lineno", None) or 1, PythonSyntax(f"{e}")


@dataclass(frozen=True)
class PythonSyntax:
    """Payload standing for a Python file that does not parse (input.python_pairs)."""

    error: str


@dataclass(frozen=True)
class Unreadable:
    """Payload standing for the rest of a file that cannot be read (truncated .gz, bad parquet)."""

    error: str


def _records(
    src: Source, inp: InputConfig, start: int, end: int
) -> Iterator[tuple[int | None, Any]]:
    """The records of `src` in [start, end), by its kind (errors are left to iter_records)."""
    if src.kind == "parquet":
        yield from _iter_parquet(src, inp, start, end)
    elif src.kind == "hf":
        yield from _iter_hf(src, inp, start, end)
    elif src.kind == "pyfuncs":
        yield from _iter_pairs(src, start)
    elif src.line_records:
        yield from _iter_lines(src, start, end)
    elif start == 0:
        with open_binary(src.path, src.compression) as f:
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
