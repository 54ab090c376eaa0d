"""Build damaged and malicious checkpoints from real ones (test helpers; no pytest imports).

Each function edits a copy of a checkpoint directory that a real run saved. The `.metadata`
index is read with plain `pickle` here: the tests trust the files they wrote themselves.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import torch

DAMAGE_KINDS = (
    "truncated_shard",
    "missing_shard",
    "flipped_shard_byte",
    "missing_common",
    "truncated_common",
    "missing_index",
    "truncated_index",
    "invalid_mcore_metadata",
    "meta_without_keys",
)
"""Every kind of damage `damage()` can do (each names the file the error must name)."""


class MarkerPayload:
    """Unpickling this object runs `touch MARKER` (what an attacker's payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker}",))


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a whole run directory (checkpoints, `latest`), without logs or W&B files."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name.startswith("iter_") or item.name == "latest":
            if item.is_dir():
                shutil.copytree(item, dst / item.name)
            else:
                shutil.copy2(item, dst / item.name)
    return dst


def _shard(ckpt: Path) -> Path:
    return sorted(ckpt.glob("*.distcp"))[0]


def damage(ckpt: Path, kind: str) -> str:
    """Damage checkpoint directory `ckpt` in one way; returns the name of the damaged file."""
    if kind == "truncated_shard":
        path = _shard(ckpt)
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "missing_shard":
        path = _shard(ckpt)
        path.unlink()
    elif kind == "flipped_shard_byte":
        path = _shard(ckpt)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "missing_common":
        path = ckpt / "common.pt"
        path.unlink()
    elif kind == "truncated_common":
        path = ckpt / "common.pt"
        os.truncate(path, path.stat().st_size // 3)
    elif kind == "missing_index":
        path = ckpt / ".metadata"
        path.unlink()
    elif kind == "truncated_index":
        path = ckpt / ".metadata"
        os.truncate(path, path.stat().st_size // 2)
    elif kind == "invalid_mcore_metadata":
        path = ckpt / "metadata.json"
        path.write_text('{"sharded_backend": "torch_di')
    elif kind == "meta_without_keys":
        path = ckpt / "meta.json"
        path.write_text(json.dumps({"format_version": 1}))
    else:
        raise ValueError(kind)
    return path.name


def plant_byte_entry(ckpt: Path, marker: Path, key: str | None = None) -> str:
    """Turn tensor entry `key` of `.metadata` into a BytesStorageMetadata entry whose bytes
    (appended to a `.distcp` shard) are a `torch.save`d payload that runs `touch MARKER` when
    unpickled: what torch.distributed.checkpoint's default planner would `torch.load` with
    `weights_only=False`. Returns the key."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    index = ckpt / ".metadata"
    with open(index, "rb") as handle:
        metadata = pickle.load(handle)  # noqa: S301 - our own test file
    key = key or next(
        k for k in metadata.state_dict_metadata if k.endswith("final_layernorm.weight")
    )
    buffer = io.BytesIO()
    torch.save(MarkerPayload(marker), buffer)
    payload = buffer.getvalue()
    shard = _shard(ckpt)
    offset = shard.stat().st_size
    with open(shard, "ab") as handle:
        handle.write(payload)
    entry = BytesStorageMetadata()
    entry.size = metadata.state_dict_metadata[key].size  # passes megatron's shape validation
    metadata.state_dict_metadata[key] = entry
    metadata.storage_data = {k: v for k, v in metadata.storage_data.items() if k.fqn != key}
    metadata.storage_data[MetadataIndex(key)] = _StorageInfo(shard.name, offset, len(payload))
    with open(index, "wb") as handle:
        pickle.dump(metadata, handle)
    checksums = ckpt / "checksums.json"
    if checksums.exists():  # an attacker rewrites the checksums too
        _rehash(ckpt, checksums)
    return key


def _rehash(ckpt: Path, checksums: Path) -> None:
    import hashlib

    record = json.loads(checksums.read_text())
    for name in record["files"]:
        data = (ckpt / name).read_bytes()
        record["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    checksums.write_text(json.dumps(record))


def nan_weights(ckpt: Path) -> str:
    """Overwrite the bytes of one model tensor with NaNs (float32 0xFFFFFFFF), keeping the
    shard's size; checksums, if any, are recomputed (a model that diverged, saved intact).
    Returns the key."""
    with open(ckpt / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # noqa: S301 - our own test file
    # the model's embedding weight, never the optimizer's moments of it: the order of
    # storage_data follows the save's write order, which is not fixed
    index, info = next(
        (i, s)
        for i, s in metadata.storage_data.items()
        if "word_embeddings" in i.fqn and not i.fqn.startswith("optimizer.")
    )
    path = ckpt / info.relative_path
    blob = bytearray(path.read_bytes())
    item = bytes(blob[info.offset : info.offset + info.length])
    tensor = torch.load(io.BytesIO(item), weights_only=True)
    buffer = io.BytesIO()
    torch.save(torch.full_like(tensor, float("nan")), buffer)
    replaced = buffer.getvalue()
    assert len(replaced) == len(item), (len(replaced), len(item))
    blob[info.offset : info.offset + info.length] = replaced
    path.write_bytes(bytes(blob))
    checksums = ckpt / "checksums.json"
    if checksums.exists():
        _rehash(ckpt, checksums)
    return index.fqn
