"""LoRA adapters on megatron-core's tensor-parallel linear layers (local spec and, untested, TE).

A target layer keeps its class's behaviour and its parameter names (`weight`, `bias`, TE's
`layer_norm_weight`): its instance is converted in place to a subclass that adds two children,
`lora_A.weight` [r, in] and `lora_B.weight` [out, r], and adds `s * B A x` (s = alpha / r) to
the base output. Base checkpoints therefore load unchanged and the Hugging Face mapping keeps
working; `merge_lora_` turns the layer back into its base class.

Math under tensor parallelism (TP size t, sequence parallelism SP). Column-parallel layer
(`linear_qkv`, `linear_fc1`): W is split on its output dim, W_local [out/t, in]; the input x is
the full hidden state (replicated over TP; with SP each rank holds s/t tokens).

    A [r, in] replicated over TP;  B_local [out/t, r] split on dim 0 like W
    x_full = x                     (SP: gather_from_sequence_parallel_region(x, grad=False))
    h      = copy_to_tp(A x_full)  (forward identity; backward all-reduce over TP)
    delta_local = s B_local h      (added to the base's local output [.., out/t])

The rows of delta over all ranks are s B A x: the full adapter output. Backward: each rank's
dL/dh = s B_local^T dL/d(delta_local) is only its rows' share; the all-reduce in copy_to_tp
makes dL/dh complete and identical on all ranks, so dA = dh^T x_full and the adapter's input
grad A^T dh are complete and identical too (A is a replicated parameter: no further reduce; its
`tensor_model_parallel=False` makes the grad norm count it once). The base's input grad is
all-reduced by the base layer itself (copy_to_tp / reduce-scatter inside it); the adapter's is
already complete, so it is added to x directly: without SP x is replicated and x's grad is
base (all-reduced) + adapter (complete); with SP the gather's backward with
tensor_parallel_output_grad=False just keeps this rank's s/t rows of the complete grad (the
base's gather reduce-scatters its partial sums).

Row-parallel layer (`linear_proj`, `linear_fc2`): W is split on its input dim, W_local
[out, in/t]; the input x_local is the matching slice [.., in/t] (input_is_parallel).

    A_local [r, in/t] split on dim 1 like W;  B [out, r] replicated over TP
    h     = reduce_from_tp(A_local x_local)  (forward all-reduce: A x; backward identity)
    delta = s B h                            (full output, identical on all ranks)
    SP:     delta = scatter_to_sequence_parallel_region(delta)  (this rank's s/t tokens)
    output = base output + delta

Backward: dL/d(delta) is complete on every rank (replicated downstream ops; with SP the
scatter's backward all-gathers the token slices), so dB = d(delta)^T h is complete and identical
on all ranks, dh = s B^T d(delta) too, and (identity backward of reduce_from_tp)
dA_local = dh^T x_local and dx_local = A_local^T dh are exactly this rank's slices. The delta is
added to the output whether the base added its bias (`skip_bias_add=False`) or returns it
separately (`skip_bias_add=True`): addition commutes, the returned bias stays the base's.

Merging (per TP rank, in megatron's layout): both cases are W_local += s B_local A_local with
the local tensors (column: B_local [out/t, r] @ A [r, in]; row: B [out, r] @ A_local [r, in/t]).

Init is layout-independent: A is drawn on the CPU as the full [r, in] matrix from a generator
seeded by (seed, global layer number, module name) with peft's kaiming-uniform (a=sqrt(5):
U(-1/sqrt(in), 1/sqrt(in))) and sliced for this TP rank; B is zero. The default RNGs are not
touched, so adding adapters changes no other random draw.

Dropout (peft.dropout) is applied to the adapter input: column layers draw from the default
generator (the same on every TP rank, as x_full is replicated), row layers inside megatron's
model-parallel RNG tracker (x_local differs per rank).

Transformer Engine (TEColumnParallelLinear, TERowParallelLinear, TELayerNormColumnParallelLinear)
use the same code; for the fused-norm layer the adapter input is the normalized input, computed
from the module's `layer_norm_weight` (and bias). The TE path is UNTESTED here (no GPU, TE not
installed).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F

ADAPTER_KEYS = ("lora_A", "lora_B")
"""Child names of the adapter matrices (state-dict keys `<layer>.lora_A.weight`, ...)."""


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict / sharded-state-dict key names an adapter tensor."""
    return any(f".{name}." in f".{key}" for name in ADAPTER_KEYS)


class LoraMatrix(torch.nn.Module):
    """One adapter matrix as a child module (state-dict key `<child>.weight`)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)


def init_seed(seed: int, layer_number: int, name: str) -> int:
    """The generator seed of one layer's A: a hash of (seed, global layer number, name)."""
    digest = hashlib.sha256(f"{seed}:{layer_number}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def full_lora_a(rank: int, in_features: int, seed: int) -> torch.Tensor:
    """The full [rank, in] A in fp32, peft's kaiming_uniform_(a=sqrt(5)) on a CPU generator."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bound = 1.0 / math.sqrt(in_features)
    return torch.empty(rank, in_features).uniform_(-bound, bound, generator=generator)


class _LoraMixin:
    """Adds `s * B A x` to a megatron linear layer's output (see the module docstring)."""

    lora_kind: str  # "column" | "row"
    lora_A: LoraMatrix
    lora_B: LoraMatrix
    lora_scaling: float
    lora_dropout: float

    def forward(self, input_: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        result = super().forward(input_, *args, **kwargs)  # type: ignore[misc]
        output, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        output = output + self.lora_delta(input_).to(output.dtype)
        return (output, *rest) if isinstance(result, tuple) else output

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core import tensor_parallel as tp

        group = getattr(self, "tp_group", None)
        sp = bool(getattr(self.config, "sequence_parallel", False))  # type: ignore[attr-defined]
        a, b = self.lora_A.weight, self.lora_B.weight
        if self.lora_kind == "column":
            x = self.lora_input(x)
            if sp:
                x = tp.gather_from_sequence_parallel_region(
                    x, tensor_parallel_output_grad=False, group=group
                )
            x = self._dropout(x)
            h = tp.copy_to_tensor_model_parallel_region(F.linear(x, a), group=group)
            return F.linear(h, b) * self.lora_scaling
        x = self._dropout(x, tp_local=True)
        h = tp.reduce_from_tensor_model_parallel_region(F.linear(x, a), group=group)
        delta = F.linear(h, b) * self.lora_scaling
        if sp:
            delta = tp.scatter_to_sequence_parallel_region(delta, group=group)
        return delta

    def _dropout(self, x: torch.Tensor, tp_local: bool = False) -> torch.Tensor:
        """Dropout on the adapter input; `tp_local`: x differs per TP rank (own RNG stream)."""
        if self.lora_dropout == 0.0 or not self.training:  # type: ignore[attr-defined]
            return x
        if not tp_local:
            return F.dropout(x, p=self.lora_dropout, training=True)
        from megatron.core import tensor_parallel as tp

        with tp.get_cuda_rng_tracker().fork():
            return F.dropout(x, p=self.lora_dropout, training=True)

    def lora_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input the adapter sees: x, or for TE's fused-norm layer the normalized x."""
        norm_weight = getattr(self, "layer_norm_weight", None)
        if norm_weight is None:
            return x
        config = self.config  # type: ignore[attr-defined]
        weight = norm_weight + 1 if config.layernorm_zero_centered_gamma else norm_weight
        eps = config.layernorm_epsilon
        if config.normalization == "RMSNorm":
            return (
                x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight
            )
        bias = getattr(self, "layer_norm_bias", None)
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: Any = (), metadata: Any = None):
        """The base layer's sharded tensors, with the adapters' TP sharding.

        Column: A replicated, B split on dim 0; row: A split on dim 1, B replicated (the base
        marks every unknown tensor replicated, so only the split one is replaced).
        """
        from megatron.core import parallel_state
        from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

        sd = super().sharded_state_dict(prefix, sharded_offsets, metadata)  # type: ignore[misc]
        name, axis = ("lora_B", 0) if self.lora_kind == "column" else ("lora_A", 1)
        key = f"{prefix}{name}.weight"
        dp_cp = (metadata or {}).get("dp_cp_group")
        sd[key] = make_tp_sharded_tensor_for_checkpoint(
            getattr(self, name).weight,
            key,
            axis,
            prepend_offsets=sharded_offsets,
            tp_group=getattr(self, "tp_group", None)
            or parallel_state.get_tensor_model_parallel_group(),
            dp_cp_group=dp_cp or parallel_state.get_data_parallel_group(with_context_parallel=True),
        )
        return sd


@functools.cache
def lora_class(base: type, kind: str) -> type:
    """The LoRA subclass of a megatron linear class (one per base class and kind)."""
    return type(f"Lora{base.__name__}", (_LoraMixin, base), {"lora_kind": kind})


def base_class(cls: type) -> type:
    """The megatron class a LoRA subclass was made from (itself otherwise)."""
    return cls.__mro__[2] if issubclass(cls, _LoraMixin) else cls


def has_adapter(module: torch.nn.Module) -> bool:
    return isinstance(module, _LoraMixin)


def _local_dims(module: torch.nn.Module, kind: str) -> tuple[int, int, int, int]:
    """(full in, full out, local in, local out) of a megatron linear layer's weight."""
    out_local, in_local = module.weight.shape
    tp = _tp_size()
    if kind == "column":
        return in_local, out_local * tp, in_local, out_local
    return in_local * tp, out_local, in_local, out_local


def _tp_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_world_size()


def add_adapter(
    module: torch.nn.Module,
    kind: str,
    rank: int,
    alpha: float,
    dropout: float,
    seed: int,
) -> None:
    """Convert `module` in place to its LoRA subclass with A (seeded) and B = 0."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    if getattr(module, "gather_output", False):
        raise ValueError(f"{type(module).__name__} with gather_output=True is not supported")
    in_full, _, in_local, out_local = _local_dims(module, kind)
    weight = module.weight
    a_full = full_lora_a(rank, in_full, seed)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    if kind == "row":
        a_full = a_full[:, tp_rank * in_local : (tp_rank + 1) * in_local]
    out_b = out_local if kind == "column" else _local_dims(module, kind)[1]
    module.__class__ = lora_class(type(module), kind)
    module.lora_A = LoraMatrix(a_full.to(weight.dtype).to(weight.device).contiguous())
    module.lora_B = LoraMatrix(torch.zeros(out_b, rank, dtype=weight.dtype, device=weight.device))
    module.lora_scaling = alpha / rank
    module.lora_dropout = dropout
    split_a, split_b = kind == "row", kind == "column"
    set_tensor_model_parallel_attributes(module.lora_A.weight, split_a, 1 if split_a else -1, 1)
    set_tensor_model_parallel_attributes(module.lora_B.weight, split_b, 0 if split_b else -1, 1)


@torch.no_grad()
def merge_adapter_(module: torch.nn.Module) -> None:
    """W_local += s B_local A_local (fp32), then drop the adapter and restore the base class."""
    a, b = module.lora_A.weight, module.lora_B.weight
    delta = module.lora_scaling * (b.float() @ a.float())
    module.weight.copy_((module.weight.float() + delta).to(module.weight.dtype))
    del module.lora_A, module.lora_B
    for attr in ("lora_scaling", "lora_dropout"):
        module.__dict__.pop(attr, None)
    module.__class__ = base_class(type(module))
