"""Refuse checkpoint files that would run code when loaded.

A megatron `torch_dist` checkpoint holds three kinds of files that loading reads:

- `__R_N.distcp` shards: tensors, each read by offset and decoded with
  `torch.load(weights_only=True)`, *if* `.metadata` describes it as a tensor. An entry of type
  `BytesStorageMetadata` is instead handed to `torch.load(weights_only=False)` (a full pickle
  load) by torch.distributed.checkpoint's default load planner: our checkpoints never contain
  one, so `.metadata` may not either, and the planner's byte path is disabled while we load;
- `common.pt`: the non-sharded state (scheduler, TrainState, optimizer hyper-parameters),
  loaded by megatron with `torch.load`, which is `weights_only=True` (tensor/primitive-only)
  by default in torch >= 2.6. We check it with `weights_only=True` explicitly, so an
  environment that sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it into a pickle load;
- `.metadata`: torch.distributed.checkpoint's index, a *pickle*. It is replayed here through
  an unpickler that resolves only an explicit list of metadata dataclasses, torch
  sizes/dtypes and plain containers (any other global, e.g. `os.system`, is refused), then
  every entry must be a tensor (`TensorStorageMetadata`) stored in a `*.distcp` file of the
  checkpoint directory itself, without transforms. While our code loads (`guarded_load`),
  torch reads `.metadata` through the same unpickler and checks, so a file swapped after the
  check is refused too.

Load requests (`check_request`) hold only tensors: no ShardedObject (which megatron stores and
reads as pickled bytes). What remains trusted: the torch/megatron code itself.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pretrain.checkpoint.errors import CheckpointError, UnsafeCheckpoint

_DCP = "torch.distributed.checkpoint"
_ALLOWED_GLOBALS = {
    (f"{_DCP}.metadata", "Metadata"),
    (f"{_DCP}.metadata", "MetadataIndex"),
    (f"{_DCP}.metadata", "ChunkStorageMetadata"),
    (f"{_DCP}.metadata", "TensorStorageMetadata"),
    (f"{_DCP}.metadata", "TensorProperties"),
    (f"{_DCP}.metadata", "StorageMeta"),
    (f"{_DCP}.metadata", "_MEM_FORMAT_ENCODING"),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    (f"{_DCP}.planner", "SavePlan"),  # megatron's `all_local_plans` (a save-time cache)
    (f"{_DCP}.planner", "WriteItem"),
    (f"{_DCP}.planner", "WriteItemType"),
    (f"{_DCP}.planner", "TensorWriteData"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id of a plain torch DCP save
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}
"""Globals `.metadata` may name: data classes describing tensor chunks (never
BytesStorageMetadata), plus torch dtypes (checked by type)."""
_SHARD_NAME = re.compile(r"^__\d+_\d+\.distcp$")
"""How torch.distributed.checkpoint names shard files (`__<rank>_<n>.distcp`)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allowlisted globals (see the module docstring)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def _refused(path: Path | str, why: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"{path}: refusing to load: {why}. Our checkpoints hold only tensors; this file could "
        "execute code when unpickled; only load checkpoints from sources you trust."
    )


def load_dcp_metadata(handle: BinaryIO, path: Path | str) -> Any:
    """Unpickle `.metadata` from `handle` with the restricted unpickler, then `check_index`."""
    try:
        metadata = _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        if "is not allowed" in str(exc):
            raise _refused(path, str(exc)) from exc
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint index ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of the restricted replay is damage
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint index ({exc!r})") from exc
    check_index(metadata, path)
    return metadata


def check_index(metadata: Any, path: Path | str) -> None:
    """Every entry is a tensor stored in a shard file of this directory, untransformed."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    if type(metadata) is not Metadata or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{path}: not a torch.distributed.checkpoint index")
    for key, entry in metadata.state_dict_metadata.items():
        if type(entry) is not TensorStorageMetadata:
            raise _refused(path, f"entry {key!r} is a {type(entry).__name__}, not a tensor")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise CheckpointError(f"{path}: not a torch.distributed.checkpoint index")
    for index, info in storage.items():
        fqn = getattr(index, "fqn", None)
        if fqn not in metadata.state_dict_metadata or type(info) is not _StorageInfo:
            raise _refused(path, f"storage entry {fqn!r} describes no tensor")
        if not _SHARD_NAME.match(str(info.relative_path)):
            raise _refused(path, f"entry {fqn!r} points outside the shard files")
        if info.transform_descriptors:
            raise _refused(path, f"entry {fqn!r} has stream transforms")


def read_dcp_metadata(path: Path) -> Any:
    """The checked index of a checkpoint (`load_dcp_metadata` of the file `path`)."""
    try:
        with open(path, "rb") as handle:
            return load_dcp_metadata(handle, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint index ({exc})") from exc


def check_dcp_metadata(path: Path) -> None:
    """Replay `.metadata` with the restricted unpickler; CheckpointError on a foreign global."""
    read_dcp_metadata(path)


def check_common(path: Path) -> None:
    """Load `common.pt` tensor/primitive-only; CheckpointError if it needs arbitrary pickles."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(
            f"{path}: refusing to load: it contains objects beyond tensors and plain "
            f"Python values ({str(exc).splitlines()[0]})"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt ({first})") from exc


def check_checkpoint_files(ckpt_dir: Path) -> None:
    """Run every check on a checkpoint directory before dist_checkpointing opens it."""
    metadata = ckpt_dir / ".metadata"
    if metadata.is_file():
        check_dcp_metadata(metadata)
    common = ckpt_dir / "common.pt"
    if common.is_file():
        check_common(common)


def check_request(request: Any, where: str = "load request") -> None:
    """CheckpointError if a load request holds a ShardedObject (loaded by unpickling)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensorFactory

    stack = [request]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, ShardedTensorFactory):
            stack.append(item.build())
        elif isinstance(item, ShardedObject):
            raise UnsafeCheckpoint(
                f"{where}: {item.key} is a ShardedObject, which loading would unpickle; "
                "only tensors are loaded from checkpoints"
            )


class LoadGuard:
    """What `guarded_load` yields: the refusal raised inside torch, if any (torch may wrap it
    into another exception or only keep its text)."""

    def __init__(self) -> None:
        self.refusal: UnsafeCheckpoint | None = None
        """The first UnsafeCheckpoint raised while the guard was active."""

    def refuse(self, exc: UnsafeCheckpoint) -> UnsafeCheckpoint:
        """Record `exc` (the first one wins) and return it, to be raised."""
        self.refusal = self.refusal or exc
        return exc


_GUARDS: list[LoadGuard] = []


def _record(exc: UnsafeCheckpoint) -> UnsafeCheckpoint:
    return _GUARDS[-1].refuse(exc) if _GUARDS else exc


class _RestrictedPickle:
    """Stands in for the `pickle` module inside torch's filesystem reader (`guarded_load`)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    @staticmethod
    def load(handle: BinaryIO, *args: Any, **kwargs: Any) -> Any:
        data = handle.read()
        try:
            return load_dcp_metadata(io.BytesIO(data), getattr(handle, "name", ".metadata"))
        except UnsafeCheckpoint as exc:
            raise _record(exc) from None


def _refuse_bytes(self: Any, read_item: Any, value: Any) -> None:
    raise _record(
        UnsafeCheckpoint(
            f"refusing to load checkpoint entry {read_item.dest_index.fqn!r}: it is stored as "
            "pickled bytes (BytesStorageMetadata), which tensor-only checkpoints never contain"
        )
    )


@contextlib.contextmanager
def guarded_load() -> Iterator[LoadGuard]:
    """While loading: `.metadata` is read by the restricted unpickler; byte entries refused.

    Patches torch.distributed.checkpoint's filesystem reader (its `pickle` module reference)
    and `DefaultLoadPlanner.load_bytes`, which megatron's `MCoreLoadPlanner` inherits. Yields a
    LoadGuard holding the refusal, if one was raised.
    """
    from torch.distributed.checkpoint import default_planner, filesystem

    saved_pickle = filesystem.pickle
    saved_load_bytes = default_planner.DefaultLoadPlanner.load_bytes
    filesystem.pickle = _RestrictedPickle()  # type: ignore[assignment]
    default_planner.DefaultLoadPlanner.load_bytes = _refuse_bytes  # type: ignore[method-assign]
    guard = LoadGuard()
    _GUARDS.append(guard)
    try:
        yield guard
    finally:
        _GUARDS.remove(guard)
        filesystem.pickle = saved_pickle
        default_planner.DefaultLoadPlanner.load_bytes = saved_load_bytes  # type: ignore[method-assign]
