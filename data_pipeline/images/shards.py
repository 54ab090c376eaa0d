"""Tar shards in the webdataset layout plus their .idx.npy offset index (docs/data_format.md).

Per sample key K (the 9-digit global sample index) a shard holds K.png, K.txt, K.ids in that
order; `shard_NNNNN.idx.npy` is an int64 [n, 4] array: byte offset and size of the data of K.png,
then of K.ids. Both files are written under a temporary name, fsynced and renamed, with fixed
member metadata (mtime 0, uid/gid 0, mode 0644, ustar), so the bytes depend only on the samples.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.diskspace import disk_full_guard
from data_pipeline.tokenizer import sha256_file, tmp_suffix, write_atomic

KEY_DIGITS = 9
"""Width of the zero-padded sample keys."""


def shard_names(number: int) -> tuple[str, str]:
    """(tar, index) file names of shard `number`."""
    return f"shard_{number:05d}.tar", f"shard_{number:05d}.idx.npy"


def sample_key(index: int) -> str:
    """The member-name key of global sample `index`, e.g. 000000042."""
    return f"{index:0{KEY_DIGITS}d}"


def _padded(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


class ShardWriter:
    """Writes one shard; `close()` renames it into place and returns its manifest entry."""

    def __init__(self, out: Path, number: int) -> None:
        self.out = out
        self.tar_name, self.index_name = shard_names(number)
        self.tmp = out / f".{self.tar_name}.{tmp_suffix()}"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.rows: list[tuple[int, int, int, int]] = []

    def _member(self, name: str, data: bytes) -> int:
        """Append one member; return the byte offset of its data in the tar."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with disk_full_guard(self.out / self.tar_name, "the shard"):
            self.tar.addfile(info, io.BytesIO(data))
        return self.tar.offset - _padded(len(data))

    def add(self, index: int, png: bytes, caption: str, ids: list[int]) -> None:
        """Append sample `index`: its PNG, caption and int32 little-endian token ids."""
        key = sample_key(index)
        ids_bytes = np.asarray(ids, dtype="<i4").tobytes()
        png_offset = self._member(f"{key}.png", png)
        self._member(f"{key}.txt", caption.encode("utf-8"))
        ids_offset = self._member(f"{key}.ids", ids_bytes)
        self.rows.append((png_offset, len(png), ids_offset, len(ids_bytes)))

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> dict[str, Any]:
        """Finish the tar (end blocks), fsync, rename; write the index; the manifest entry."""
        with disk_full_guard(self.out / self.tar_name, "the shard"):
            self.tar.close()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.out / self.tar_name)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(self.rows, dtype=np.int64).reshape(-1, 4))
        write_atomic(self.out / self.index_name, buffer.getvalue())
        return {
            "tar": self.tar_name,
            "index": self.index_name,
            "num_samples": len(self.rows),
            "sha256": sha256_file(self.out / self.tar_name),
            "index_sha256": sha256_file(self.out / self.index_name),
        }

    def abort(self) -> None:
        """Drop the unfinished shard (its temporary file)."""
        try:
            self.tar.close()
            self.file.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)
