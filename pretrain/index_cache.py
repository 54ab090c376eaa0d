"""Megatron's dataset index cache, written and read only here, never unpickled.

megatron-core 0.16.1 `GPTDataset._build_document_sample_shuffle_indices` caches each split's
document/sample/shuffle indexes as `.npy` files in `config.path_to_cache`, or, when that is
None, in `<shard prefix>/cache/GPTDataset_indices/` *inside the data directory*; it reads them
back with `numpy.load(..., allow_pickle=True)` (a pickle file named `.npy` runs code) and keys
them by the shard's path, not its content (a directory re-prepared in place reuses the old
indexes). `BlendedDataset._build_indices` does the same in `path_to_cache`.

So megatron gets `path_to_cache=IN_MEMORY` (""; falsy, but not None): it builds every index
in memory, never looks into the data directory and saves nothing. `TrustedGPTDataset` adds the
persistent cache back when `data.cache_dir` is set: the files live in `cache_dir/<key>/`, the
key being a hash of the data's manifests (which hold every shard's sha256), split, sequence
length and seed (and the FIM settings when data.fim is on), so re-prepared data gets a fresh
folder; each file's `.npy` header must describe a plain integer array (read without
unpickling) and it is loaded with allow_pickle=False; global rank 0 writes them atomically.
The blended indexes are always built in memory (one cheap pass over the samples).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from pretrain.config import ConfigError

log = logging.getLogger(__name__)

IN_MEMORY = ""
"""`path_to_cache` that makes megatron build in memory and read/write no cache file."""

INDEXES = {"document_index": 1, "sample_index": 2, "shuffle_index": 1}
"""Megatron's index files of one GPTDataset split, with their number of dimensions."""

KEY_VERSION = 1
"""Bump to invalidate every cache folder (e.g. when the file layout changes)."""


@dataclass
class CachedGPTDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus the folder `TrustedGPTDataset` caches its indexes in."""

    index_cache: str | None = None
    """This data's cache folder (`cache_folder`); None = build in memory, save nothing."""


def cache_folder(
    cache_dir: str,
    manifests: list[dict[str, Any]],
    split: str,
    seq_length: int,
    seed: int,
    fim: dict[str, Any] | None = None,
) -> Path:
    """`cache_dir/indexes-<key>`: the key changes with the data's content or the split/order.

    `fim` (the FIM spec's unique identifiers, data.fim.rate > 0) gives FIM runs folders of their
    own; without it the key is the one plain runs always had.
    """
    payload: dict[str, Any] = {
        "version": KEY_VERSION,
        "manifest_sha256": [m["sha256"] for m in manifests],
        "split": str(split),
        "seq_length": int(seq_length),
        "seed": int(seed),
    }
    if fim is not None:
        payload["fim"] = fim
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser().resolve() / f"indexes-{key}"


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"data.cache_dir: {path} {why}; megatron index files are plain integer arrays, so it "
        "was modified or damaged and is not loaded (a pickled .npy could run code). Delete "
        f"{path.parent} (it is rebuilt) and check who can write to data.cache_dir"
    )


def check_npy(path: Path, ndim: int) -> None:
    """Raise ConfigError unless `path` is a `.npy` of a plain integer array with `ndim` dims.

    Reads only the header (`numpy.lib.format`, which parses it without unpickling).
    """
    fmt = np.lib.format
    try:
        with path.open("rb") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except (OSError, ValueError, SyntaxError) as exc:
        raise _refuse(path, f"is not a plain .npy array file ({exc})") from None
    if dtype.hasobject or dtype.kind not in "iu" or len(shape) != ndim:
        raise _refuse(path, f"holds a {dtype} array of shape {shape}, not integer indexes")


def check_folder(folder: Path) -> None:
    """Check the header of every cached `.npy` in `folder` (every rank, before building)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.npy")):
        name = next((n for n in INDEXES if path.name.endswith(f"-{n}.npy")), None)
        if name is None:
            raise _refuse(path, "is no index file this cache writes")
        check_npy(path, INDEXES[name])


def _load(paths: dict[str, Path]) -> tuple[np.ndarray, ...]:
    arrays = []
    for name, ndim in INDEXES.items():
        check_npy(paths[name], ndim)
        arrays.append(np.load(paths[name], mmap_mode="r", allow_pickle=False))
    return tuple(arrays)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        write(handle)
    os.replace(tmp, path)


def _store(paths: dict[str, Path], arrays: tuple[np.ndarray, ...], description: str) -> None:
    """Write the indexes, then the description (its presence marks a complete set)."""
    folder = paths["description"].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in zip(INDEXES, arrays, strict=True):
            _atomic_write(paths[name], lambda h, a=array: np.save(h, a, allow_pickle=False))
        _atomic_write(paths["description"], lambda h: h.write(description.encode("utf-8")))
    except OSError as exc:
        log.warning("data.cache_dir: cannot save dataset indexes in %s (%s)", folder, exc)


def _writes_cache() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


class TrustedGPTDataset(GPTDataset):
    """megatron GPTDataset whose index cache is `CachedGPTDatasetConfig.index_cache` (or none).

    megatron's builder constructs it on rank 0 first, then on the other ranks after a barrier,
    so they find the files rank 0 saved; a rank that does not (a node-local data.cache_dir)
    builds the same indexes in memory.
    """

    def _index_paths(self, folder: Path) -> dict[str, Path]:
        base = f"{self.unique_description_hash}-{type(self).__name__}-{self.index_split.name}"
        names = [*INDEXES, "description"]
        return {n: folder / f"{base}-{n}.{'txt' if n == 'description' else 'npy'}" for n in names}

    def _build_document_sample_shuffle_indices(self) -> tuple[np.ndarray, ...]:
        folder = getattr(self.config, "index_cache", None)
        if not folder:
            return super()._build_document_sample_shuffle_indices()
        paths = self._index_paths(Path(folder))
        if all(p.is_file() for p in paths.values()):
            if paths["description"].read_text(encoding="utf-8") == self.unique_description:
                return _load(paths)
            log.warning(
                "data.cache_dir: %s describes other indexes; rebuilding", paths["description"]
            )
        arrays = super()._build_document_sample_shuffle_indices()
        if _writes_cache():
            _store(paths, arrays, self.unique_description)
        return arrays
