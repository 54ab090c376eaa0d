"""Count the bytes every torch.distributed collective and p2p call is given (for _measure.py).

`CommCounter.install()` replaces the functions in `torch.distributed`,
`torch.distributed.distributed_c10d` and every alias a loaded megatron/pretrain module holds
(megatron binds `dist_all_gather_func = torch.distributed.all_gather_into_tensor` at import
time in param_and_grad_buffer.py, tensor_parallel/{layers,mappings,utils}.py, ...) with a
counting wrapper. Only the outermost call counts (torch's `_all_gather_base` calls
`all_gather_into_tensor` itself). Bytes per call: the full buffer of the collective
(all-reduce / broadcast tensor, all-gather output, reduce-scatter input, p2p tensor).
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

OPS = {
    "all_reduce": ("all_reduce", "tensor"),
    "broadcast": ("broadcast", "tensor"),
    "all_gather_into_tensor": ("all_gather", "output_tensor"),
    "_all_gather_base": ("all_gather", "output_tensor"),
    "all_gather_single": ("all_gather", "output_tensor"),
    "all_gather": ("all_gather", "tensor_list"),
    "all_gather_coalesced": ("all_gather", "output_tensor_lists"),
    "all_reduce_coalesced": ("all_reduce", "tensors"),
    "reduce": ("reduce", "tensor"),
    "gather": ("gather", "tensor"),
    "scatter": ("scatter", "tensor"),
    "reduce_scatter_tensor": ("reduce_scatter", "input"),
    "_reduce_scatter_base": ("reduce_scatter", "input"),
    "reduce_scatter_single": ("reduce_scatter", "input"),
    "reduce_scatter": ("reduce_scatter", "input_list"),
    "send": ("p2p", "tensor"),
    "recv": ("p2p", "tensor"),
    "isend": ("p2p", "tensor"),
    "irecv": ("p2p", "tensor"),
    "batch_isend_irecv": ("p2p", "p2p_op_list"),
}
"""torch.distributed function -> (operation, the argument whose bytes count)."""


SCALAR_BYTES = 16
"""Calls of at most this many bytes are control scalars (loss, grad norm, flags): `scalar`."""


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):  # tensor lists, lists of lists, P2POp lists
        return sum(_nbytes(getattr(v, "tensor", v)) for v in value)
    return 0


class CommCounter:
    """Bytes per (group label, operation) while `active`; labels come from `label_group`."""

    def __init__(self) -> None:
        self.active = False
        self.label_group: Callable[[Any], str] = lambda group: "world"
        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = threading.local()
        self._originals: dict[str, Callable[..., Any]] = {}

    def reset(self) -> None:
        """Forget the counts so far."""
        self.bytes.clear()
        self.calls.clear()

    def _record(self, op: str, size: int, group: Any, nbytes: int) -> None:
        label = "p2p" if op == "p2p" else self.label_group(group)
        if op != "p2p" and nbytes <= SCALAR_BYTES:
            label = "scalar"
        key = f"{label}:{op}" if size > 1 or op == "p2p" else f"{label}:{op}:size1"
        self.bytes[key] += nbytes
        self.calls[key] += 1

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        op, arg = OPS[name]
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "n", 0)
            if self.active and depth == 0:
                bound = signature.bind(*args, **kwargs).arguments
                group = bound.get("group")
                if op == "p2p" and name == "batch_isend_irecv":
                    group = None
                size = 2 if op == "p2p" else dist.get_world_size(group)
                self._record(op, size, group, _nbytes(bound.get(arg)))
            self._depth.n = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.n = depth

        wrapper._comm_counter_original = fn  # type: ignore[attr-defined]
        return wrapper

    def install(self) -> None:
        """Wrap the functions in torch.distributed and every loaded alias of them."""
        wrappers = {}
        for name in OPS:
            original = getattr(c10d, name, None)
            if original is None:  # not in this torch version
                continue
            self._originals[name] = original
            wrappers[id(original)] = self._wrap(name, original)
        for module in list(sys.modules.values()):
            modname = getattr(module, "__name__", "") or ""
            if not modname.startswith(("megatron", "pretrain", "torch.distributed")):
                continue
            for attr, value in list(vars(module).items()):
                if callable(value) and id(value) in wrappers:
                    setattr(module, attr, wrappers[id(value)])
