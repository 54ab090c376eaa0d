"""Quiet access to megatron-core's indexed_dataset module (its import logs and warns a lot)."""

from __future__ import annotations

import logging
import warnings
from types import ModuleType


def indexed_dataset() -> ModuleType:
    """`megatron.core.datasets.indexed_dataset`, imported without the TE/Apex/FSDP chatter."""
    logging.getLogger("megatron").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset as module
    return module
