"""Opening an input file as one binary stream, whatever its compression (none, gzip, zstd).

Shared by listing (the JSON-array check reads a file's head) and readers (records).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from typing import Any

BOM = b"\xef\xbb\xbf"
"""UTF-8 byte order mark: dropped at the start of a file (editors on Windows write it)."""


def zst_blocks(path: str) -> Iterator[bytes]:
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


class ZstdRaw(io.RawIOBase):
    """A readable raw stream over zst_blocks (so lines and read() work as for plain files)."""

    def __init__(self, path: str) -> None:
        self._blocks = zst_blocks(path)
        self._pending = b""

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` from the pending decompressed block; 0 at the end of the stream."""
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
        """Stop the block generator (closes the file) and the stream."""
        self._blocks.close()
        super().close()


def open_binary(path: str, compression: str | None) -> io.BufferedIOBase:
    """The decompressed bytes of `path` (compression: gz | zst | None) as a binary file object."""
    if compression == "gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "zst":
        return io.BufferedReader(ZstdRaw(path), buffer_size=1 << 20)
    return open(path, "rb")  # noqa: SIM115
