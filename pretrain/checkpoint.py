"""Sharded checkpoints (megatron-core dist_checkpointing): save, resume, keep-last, async.

Placeholder with the final signatures; the implementation follows.
"""

from __future__ import annotations

from typing import Any


def load_at_start(ctx: Any) -> None:
    """Restore model/optimizer/scheduler/state from a checkpoint, if configured."""
    return None


def maybe_save(ctx: Any, force: bool = False) -> bool:
    """Save a checkpoint when an interval is due (or `force`); return True if one was started."""
    return False


def finalize(ctx: Any) -> None:
    """Save at the end of training (if configured) and wait for pending async saves."""
    return None
