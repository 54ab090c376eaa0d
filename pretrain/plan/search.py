"""The fastest predicted layout that fits: a pruned grid over TP, PP, VPP, micro-batch, recompute.

The grid (what megatron-core and `pretrain.validate` accept):
- TP: divisors of `cluster.gpus_per_node` (TP stays inside a node) that divide the attention
  heads and the key/value heads; sequence parallelism on when TP > 1 (and seq % TP == 0).
- PP: divisors of model.num_layers with TP x PP dividing the world; DP = world / (TP x PP) must
  divide train.global_batch_size. The distributed optimizer is on when DP > 1.
- VPP (PP > 1): none, or v >= 2 with num_layers % (PP x v) == 0; the interleaved schedule needs the
  micro-batch count to be a multiple of PP.
- Micro-batch: 1, 2, 4, 8, 16 dividing global_batch / DP.
- Recompute: none, selective, full.
The configured layout is a candidate too, so the answer is never predicted slower than it when it
fits. Each candidate's memory (`memory.estimate_memory`) is checked before its time
(`comm.estimate_comm`, `timing.estimate_time`). Pruning: for one TP/PP/VPP and micro-batch the
first recompute setting that fits is the fastest (recompute only adds FLOPs), and when even full
recompute does not fit a micro-batch, larger ones do not fit either (activations grow with it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from pretrain.config import ClusterConfig, ConfigError, PretrainConfig
from pretrain.plan.comm import estimate_comm
from pretrain.plan.layout import layout_of
from pretrain.plan.memory import estimate_memory
from pretrain.plan.params import count_params
from pretrain.plan.timing import estimate_time
from pretrain.plan.types import GpuSpec, Layout, MemoryEstimate, ParamCounts, TimeEstimate

MICRO_BATCHES = (1, 2, 4, 8, 16)
"""Micro-batch sizes the search tries."""
RECOMPUTE = ("none", "selective", "full")
"""Recompute settings, cheapest first."""


@dataclass(frozen=True)
class Scored:
    """A candidate layout that fits, with its predictions."""

    layout: Layout
    memory: MemoryEstimate
    time: TimeEstimate

    def key(self) -> tuple[float, int, int]:
        """Fastest first; then fewer model-parallel ranks; then less memory."""
        return (self.time.step_time_s, self.layout.tp * self.layout.pp, self.memory.total)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _skeletons(cfg: PretrainConfig, cluster: ClusterConfig, world: int) -> Iterator[Layout]:
    """(TP, PP, VPP, DP, SP, dist-opt) combinations; micro-batch 1, recompute none."""
    m, t = cfg.model, cfg.train
    for tp in _divisors(cluster.gpus_per_node):
        if world % tp or m.num_attention_heads % tp or m.kv_heads() % tp:
            continue
        sp = tp > 1 and t.seq_length % tp == 0
        for pp in _divisors(m.num_layers):
            if world % (tp * pp) or t.global_batch_size % (world // (tp * pp)):
                continue
            dp = world // (tp * pp)
            vpps = [None] + [v for v in range(2, m.num_layers + 1) if m.num_layers % (pp * v) == 0]
            for vpp in vpps if pp > 1 else [None]:
                yield Layout(tp=tp, pp=pp, dp=dp, vpp=vpp, sp=sp, dist_opt=dp > 1)


def _micro_batches(cfg: PretrainConfig, skeleton: Layout) -> list[int]:
    per_rank = cfg.train.global_batch_size // skeleton.dp
    sizes = [b for b in MICRO_BATCHES if per_rank % b == 0]
    if skeleton.vpp:  # interleaved 1F1B: micro-batch count a multiple of PP
        sizes = [b for b in sizes if (per_rank // b) % skeleton.pp == 0]
    return sizes


def _apply(cfg: PretrainConfig, layout: Layout) -> PretrainConfig:
    """A shallow copy with the layout's parallel/train keys (cheap; for the estimators)."""
    parallel = dataclasses.replace(
        cfg.parallel,
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        sequence_parallel=layout.sp,
        use_distributed_optimizer=layout.dist_opt,
    )
    train = dataclasses.replace(
        cfg.train, micro_batch_size=layout.micro_batch, activation_recompute=layout.recompute
    )
    return dataclasses.replace(cfg, parallel=parallel, train=train)


def score(
    cfg: PretrainConfig,
    cluster: ClusterConfig,
    gpu: GpuSpec,
    layout: Layout,
    counts: ParamCounts,
) -> Scored | None:
    """The candidate's predictions, or None when it does not fit in `gpu.memory_bytes`."""
    memory = estimate_memory(cfg, counts, layout, cluster)
    if memory.total > gpu.memory_bytes:
        return None
    applied = _apply(cfg, layout)
    comm = estimate_comm(applied, counts, layout, cluster)
    return Scored(layout, memory, estimate_time(applied, layout, cluster, gpu, comm))


def _best_for_skeleton(
    cfg: PretrainConfig, cluster: ClusterConfig, gpu: GpuSpec, skeleton: Layout, vocab: int
) -> Iterator[Scored]:
    counts = count_params(cfg.model, vocab, skeleton)
    for micro in _micro_batches(cfg, skeleton):
        scored = None
        for recompute in RECOMPUTE:
            layout = dataclasses.replace(skeleton, micro_batch=micro, recompute=recompute)
            scored = score(cfg, cluster, gpu, layout, counts)
            if scored is not None:
                yield scored
                break
        if scored is None:
            return


def _configured(
    cfg: PretrainConfig, cluster: ClusterConfig, gpu: GpuSpec, vocab: int, world: int
) -> Scored | None:
    try:
        layout = layout_of(cfg, world)
    except ConfigError:
        return None
    return score(cfg, cluster, gpu, layout, count_params(cfg.model, vocab, layout))


def suggest_layout(
    cfg: PretrainConfig,
    cluster: ClusterConfig,
    gpu: GpuSpec,
    vocab_size: int,
    world_size: int,
) -> Layout | None:
    """The layout with the shortest predicted step time that fits in `gpu.memory_bytes`.

    Args:
        cfg: the config (model, train, precision, optim; its own layout is a candidate).
        cluster: gpus_per_node bounds TP; links, mfu and overhead feed the estimates.
        gpu: the accelerator (memory and peaks).
        vocab_size: the tokenizer's vocabulary (padded per TP).
        world_size: GPUs of the job.

    Returns:
        The fastest fitting layout, or None when no candidate fits.
    """
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    found = [
        scored
        for skeleton in _skeletons(cfg, cluster, world_size)
        for scored in _best_for_skeleton(cfg, cluster, gpu, skeleton, vocab_size)
    ]
    own = _configured(cfg, cluster, gpu, vocab_size, world_size)
    if own is not None:
        found.append(own)
    return min(found, key=Scored.key).layout if found else None
