"""Optimizer, LR schedule and the schedule hooks, on megatron-core.

Each `build_*` receives only the sub-configs it needs; `pretrain.train.setup` strings them
together into a `TrainContext`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from pretrain.config import OptimConfig, ParallelConfig, Precision
from pretrain.model import torch_dtype

if TYPE_CHECKING:
    from megatron.core.optimizer import MegatronOptimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

log = logging.getLogger(__name__)


def build_optimizer(
    model: list[torch.nn.Module],
    optim_cfg: OptimConfig,
    parallel_cfg: ParallelConfig,
    precision: Precision,
) -> MegatronOptimizer:
    """megatron's get_megatron_optimizer (AdamW/SGD; fp16 dynamic loss scaling; ZeRO-1)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer=optim_cfg.optimizer,
        lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        weight_decay=optim_cfg.weight_decay,
        adam_beta1=optim_cfg.adam_beta1,
        adam_beta2=optim_cfg.adam_beta2,
        adam_eps=optim_cfg.adam_eps,
        clip_grad=optim_cfg.clip_grad,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        params_dtype=torch_dtype(precision),
        loss_scale=optim_cfg.loss_scale,
        initial_loss_scale=optim_cfg.initial_loss_scale,
        min_loss_scale=optim_cfg.min_loss_scale,
        loss_scale_window=optim_cfg.loss_scale_window,
        hysteresis=optim_cfg.hysteresis,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        overlap_param_gather=parallel_cfg.overlap_param_gather,
    )
    return get_megatron_optimizer(config, model)


def build_scheduler(
    optimizer: MegatronOptimizer, optim_cfg: OptimConfig, max_steps: int
) -> OptimizerParamScheduler:
    """OptimizerParamScheduler: linear warmup, then cosine/linear/constant decay to min_lr."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay_steps = optim_cfg.decay_steps or max_steps
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=optim_cfg.lr,
        min_lr=optim_cfg.min_lr,
        lr_warmup_steps=min(optim_cfg.warmup_steps, max(decay_steps - 1, 0)),
        lr_decay_steps=max(decay_steps, 1),
        lr_decay_style=optim_cfg.decay_style,
        start_wd=optim_cfg.weight_decay,
        end_wd=optim_cfg.weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


def configure_model_hooks(
    model: list[torch.nn.Module], optimizer: MegatronOptimizer, parallel_cfg: ParallelConfig
) -> None:
    """Wire megatron's schedule hooks (as Megatron-LM's training.py does)."""
    from megatron.core.distributed import finalize_model_grads

    config = model[0].config
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    no_sync = [chunk.no_sync for chunk in model]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    config.grad_sync_func = None
    config.param_sync_func = None
    if parallel_cfg.overlap_grad_reduce:
        sync = [chunk.start_grad_sync for chunk in model]
        config.grad_sync_func = sync[0] if len(sync) == 1 else sync
    if parallel_cfg.overlap_param_gather and parallel_cfg.use_distributed_optimizer:
        params = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = params[0] if len(params) == 1 else params
