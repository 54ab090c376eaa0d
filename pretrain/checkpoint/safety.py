"""Refuse checkpoint files that would run code when loaded.

A megatron `torch_dist` checkpoint holds three kinds of files:

- `__N_M.distcp` shards: raw tensor bytes, read by offset (no unpickling of tensors);
- `common.pt`: the non-sharded state (scheduler, TrainState, optimizer hyper-parameters),
  loaded by megatron with `torch.load`, which is `weights_only=True` (tensor/primitive-only)
  by default in torch >= 2.6. We check it with `weights_only=True` explicitly, so an
  environment that sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it into a pickle load;
- `.metadata`: torch.distributed.checkpoint's index, a *pickle* that torch reads with
  `pickle.load`. It is first replayed here through an unpickler that only resolves the
  torch.distributed.checkpoint metadata classes, torch sizes/dtypes and plain containers;
  any other global (os.system, builtins.eval, ...) is refused before torch opens the file.

What remains trusted: the torch/megatron code itself and the allowlisted metadata classes.
Our saves contain no ShardedObjects (which torch.distributed.checkpoint unpickles with
`weights_only=False`), and loads never request any.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from pretrain.checkpoint.meta import CheckpointError

_DCP_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
    "torch.distributed._shard.sharded_tensor.metadata",
    "torch.distributed._shard.metadata",
)
"""Modules whose *classes* (dataclasses and enums describing tensor chunks) may be rebuilt."""
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allowlisted globals (see the module docstring)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        obj = super().find_class(module, name) if _may_resolve(module, name) else None
        allowed = (
            (module, name) in _ALLOWED_GLOBALS
            or (module in _DCP_MODULES and isinstance(obj, type))
            or (module == "torch" and isinstance(obj, torch.dtype))
            or (module == "torch.distributed.checkpoint.metadata" and isinstance(obj, dict))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return obj


def _may_resolve(module: str, name: str) -> bool:
    # Importing an arbitrary module can run code: only look names up in known modules.
    return module in _DCP_MODULES or module == "torch" or (module, name) in _ALLOWED_GLOBALS


def check_dcp_metadata(path: Path) -> None:
    """Replay `.metadata` with the restricted unpickler; CheckpointError on a foreign global."""
    try:
        with open(path, "rb") as handle:
            _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to load: {exc}. This file can execute code when unpickled; "
            "only load checkpoints from sources you trust."
        ) from exc
    except (OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint index ({exc})") from exc


def check_common(path: Path) -> None:
    """Load `common.pt` tensor/primitive-only; CheckpointError if it needs arbitrary pickles."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to load: it contains objects beyond tensors and plain "
            f"Python values ({str(exc).splitlines()[0]})"
        ) from exc


def check_checkpoint_files(ckpt_dir: Path) -> None:
    """Run every check on a checkpoint directory before dist_checkpointing opens it."""
    metadata = ckpt_dir / ".metadata"
    if metadata.is_file():
        check_dcp_metadata(metadata)
    common = ckpt_dir / "common.pt"
    if common.is_file():
        check_common(common)
