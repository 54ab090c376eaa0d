"""The planner's Layout from a config and a world size, and a config copy with a layout applied."""

from __future__ import annotations

import copy

from pretrain.config import ConfigError, PretrainConfig
from pretrain.plan.types import Layout


def layout_of(cfg: PretrainConfig, world_size: int) -> Layout:
    """The layout `cfg` trains with on `world_size` GPUs (DP = world / (TP x PP)).

    Raises:
        ConfigError: TP x PP does not divide the world size.
    """
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if world_size < 1 or world_size % (tp * pp) != 0:
        raise ConfigError(
            f"cluster.num_gpus={world_size} is not divisible by "
            f"parallel.tensor_model_parallel_size={tp} x "
            f"parallel.pipeline_model_parallel_size={pp} = {tp * pp}; use a multiple of "
            f"{tp * pp} GPUs or change the parallel sizes"
        )
    return Layout(
        tp=tp,
        pp=pp,
        dp=world_size // (tp * pp),
        vpp=p.virtual_pipeline_model_parallel_size,
        sp=p.sequence_parallel,
        dist_opt=p.use_distributed_optimizer,
        micro_batch=cfg.train.micro_batch_size,
        recompute=cfg.train.activation_recompute,
    )


def with_layout(cfg: PretrainConfig, layout: Layout) -> PretrainConfig:
    """A deep copy of `cfg` whose `parallel.*`, `train.micro_batch_size` and
    `train.activation_recompute` are the layout's (DP follows from the world size)."""
    out = copy.deepcopy(cfg)
    p = out.parallel
    p.tensor_model_parallel_size = layout.tp
    p.pipeline_model_parallel_size = layout.pp
    p.virtual_pipeline_model_parallel_size = layout.vpp
    p.sequence_parallel = layout.sp
    p.use_distributed_optimizer = layout.dist_opt
    out.train.micro_batch_size = layout.micro_batch
    out.train.activation_recompute = layout.recompute
    return out


def num_microbatches(cfg: PretrainConfig, layout: Layout) -> int:
    """Micro-batches per step per data-parallel rank: global / (micro x DP), at least 1."""
    return max(1, cfg.train.global_batch_size // (layout.micro_batch * layout.dp))


def padded_vocab(cfg: PretrainConfig, layout: Layout, vocab_size: int | None = None) -> int:
    """Embedding rows at the layout's TP: `vocab_size` (default model.vocab_size) padded.

    Raises:
        ConfigError: no vocabulary known (model.vocab_size=null and none given).
    """
    vocab = vocab_size if vocab_size is not None else cfg.model.vocab_size
    if vocab is None:
        raise ConfigError(
            "model.vocab_size=null: the planner needs the vocabulary (set model.vocab_size=N "
            "or plan with data manifests)"
        )
    return cfg.model.padded_vocab_size(vocab, layout.tp)
