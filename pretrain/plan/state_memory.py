"""Weights, gradients and optimizer state on the most loaded rank, as this repo sets up megatron.

The setup (`pretrain.model.wrap_model`, `pretrain.optim.build_optimizer`, megatron-core 0.16):
- weights: parameters in the training precision (fp32 4 bytes, bf16/fp16 2 bytes; Float16Module
  keeps them in that dtype);
- gradients: megatron DDP's contiguous `main_grad` buffer, fp32 always
  (`DistributedDataParallelConfig(grad_reduce_in_fp32=True)`), one element per parameter; the
  bf16 `.grad` of a parameter only lives until its hook adds it into the buffer;
- optimizer: fp32 states per parameter (AdamW: exp_avg + exp_avg_sq; SGD: one momentum buffer,
  megatron's `sgd_momentum=0.9`) plus, for bf16/fp16, an fp32 main copy of every parameter
  (`Float16OptimizerWithFloat16Params`; the main grads are the DDP buffer, not a copy). fp32
  training steps the model parameters themselves (no main copy). With the distributed
  optimizer (ZeRO-1, Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
  Trillion Parameter Models", stage 1: optimizer states partitioned, memory (2 + 2 + K) psi
  -> 2 psi + 2 psi + K psi / N_d) the main params and states are sharded over DP: each rank
  holds 1/DP of its (padded) grad buffer's worth.

With the distributed optimizer megatron pads the buffers: every parameter starts at a multiple
of 64 elements and each bucket ends at a multiple of lcm(DP, 128) (`param_and_grad_buffer.py`);
that padding (< 64 elements per parameter tensor) is not predicted: it is far below 1% for
every preset and the tiny test model.
"""

from __future__ import annotations

from pretrain.config import OptimConfig, Precision
from pretrain.plan.types import Layout, ParamCounts

PARAM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes of one parameter (and of one activation element) in each training precision."""

MAIN_GRAD_BYTES = 4
"""The DDP grad buffer is fp32 (grad_reduce_in_fp32=True in pretrain.model.wrap_model)."""

FP32_BYTES = 4

STATES_PER_PARAM = {"adam": 2, "sgd": 1}
"""fp32 optimizer states per parameter: AdamW exp_avg + exp_avg_sq; SGD momentum (0.9)."""


def optimizer_elements_per_param(precision: Precision, optimizer: str) -> int:
    """fp32 elements the optimizer keeps per parameter (states + main copy for bf16/fp16)."""
    main_copy = 0 if precision == "fp32" else 1
    return STATES_PER_PARAM[optimizer] + main_copy


def static_memory(
    counts: ParamCounts, layout: Layout, precision: Precision, optim_cfg: OptimConfig
) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes on the rank holding the most parameters.

    Args:
        counts: `pretrain.plan.params.count_params` for the layout (tied copies included).
        layout: dp and dist_opt decide the optimizer sharding.
        precision: fp32 | bf16 | fp16.
        optim_cfg: optim.optimizer (adam | sgd).
    """
    params = counts.max_per_rank()
    weights = params * PARAM_BYTES[precision]
    gradients = params * MAIN_GRAD_BYTES
    elements = params * optimizer_elements_per_param(precision, optim_cfg.optimizer)
    if layout.dist_opt:
        elements = -(-elements // layout.dp)
    return weights, gradients, elements * FP32_BYTES
