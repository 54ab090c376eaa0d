"""megatron dist_checkpointing plumbing: background (async) saves and writer preparation.

`AsyncCallsQueue` (megatron) runs each async save in a forked process; the save is committed
by `finalize_async` on every rank once all ranks' writers finished. `prepare_dist_checkpointing`
must run before the first save/load (see its docstring).
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pretrain.checkpoint.saver import Saver

log = logging.getLogger("pretrain.checkpoint")


def async_queue(saver: Saver) -> Any:
    """The saver's AsyncCallsQueue (created on first use; temporal = one fork per save)."""
    if saver.queue is None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        saver.queue = AsyncCallsQueue(persistent=False)
    return saver.queue


def finalize_async(saver: Saver, blocking: bool) -> None:
    """Complete finished background saves (collective; every rank has the same queue)."""
    if saver.queue is None or saver.queue.get_num_unfinalized_calls() == 0:
        return
    start = time.perf_counter()
    done = saver.queue.maybe_finalize_async_calls(blocking=blocking)
    for _ in done:
        name = saver.pending.pop(0)
        elapsed = time.perf_counter() - start
        log.info("async save of %s complete (finalized in %.2fs)", name, elapsed)


_MANAGERS: list[Any] = []


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # not Linux: the manager may outlive a killed rank
        pass


def _results_queue() -> Any:
    """The queue megatron's FileSystemWriterAsync reports write results through.

    megatron creates it with `multiprocessing.get_context("spawn").Manager()`: a server
    process (plus a resource tracker) per rank that survives a SIGKILLed rank and keeps its
    stdout open, so a launcher waiting for the job's output hangs, and that costs ~3 s at the
    first save. We start the manager by fork instead, with PR_SET_PDEATHSIG so it dies with
    its rank. (A plain multiprocessing.Queue is not usable: megatron reads it with
    `get_nowait()` right after a `put()` from the same process, racing the feeder thread.)
    """
    import multiprocessing
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=multiprocessing.get_context("fork"))
    manager.start(initializer=_die_with_parent)
    _MANAGERS.append(manager)
    return manager.Queue()


_CKPT_CUDA_MODULES = (
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.dist_checkpointing.strategies.filesystem_async",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)


def prepare_dist_checkpointing() -> None:
    """Prepare megatron's checkpoint writer (see `_results_queue`); on CPU add the torch proxy."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from pretrain import compat

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = _results_queue()
    if not compat.is_active():
        return
    for name in _CKPT_CUDA_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is torch:
            module.torch = compat.TorchProxy()
