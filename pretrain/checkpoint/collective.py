"""Small object collectives for checkpoint decisions (no-ops without a process group).

Every rank must take the same decision about a checkpoint (damaged or not, saved or not), or
some ranks would wait forever in the next collective: each rank's finding is gathered and the
union acted upon.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.api import CheckpointException

FAILURES = (Exception, CheckpointException)
"""What a failed torch/megatron save or load raises (CheckpointException is a BaseException)."""


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a small picklable value of our own), on every rank."""
    _, size = world()
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
