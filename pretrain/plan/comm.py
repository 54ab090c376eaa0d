"""Communication of one training step: bytes each rank passes to torch.distributed, and time.

Bytes are those of the full buffer of each call (all-reduce tensor, all-gather output,
reduce-scatter input, each p2p send and receive), as megatron-core 0.16 issues them in this
repo's setup; `tests/plan/test_real_runs.py` counts them in real gloo runs. With s = sequence
length, b = micro-batch, h = hidden, d = bytes per activation (fp32 4, bf16/fp16 2), A = s b h d,
m = micro-batches per step (global batch / (b DP)), L = layers per pipeline rank:

TP (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters
Using Megatron-LM", section 2.3 / 3.2: two all-reduces per layer in the forward and two in the
backward pass; Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", section 4.2.2 for sequence parallelism), per micro-batch:
- without SP: 4 L all-reduces of A (attention and MLP output forward; QKV and fc1 input
  gradient backward), + 1 (vocab-parallel embedding, first stage), + 1 (output layer input
  gradient, last stage);
- with SP: per layer 6 all-gathers + 4 reduce-scatters of A (forward: all-gather before QKV
  and fc1, reduce-scatter after proj and fc2; backward: the all-gather of each row-parallel
  output gradient, a second all-gather of the column-parallel input for its weight gradient,
  and the reduce-scatter of its input gradient). The embedding: all-reduce (learned positions,
  then a local scatter) or reduce-scatter (RoPE) forward and an all-gather backward. The output
  layer: 2 all-gathers + 1 reduce-scatter. Once per step the gradients of the replicated norm
  weights and row-parallel biases (fp32 main grads) are all-reduced over TP;
- full recompute repeats each layer's forward communication in the backward pass;
- the vocab-parallel cross-entropy (last stage): 3 all-reduces of s b fp32 values.
PP (Narayanan et al. 2021, section 2.2): per micro-batch and virtual stage boundary the
activation (s/TP with SP) b h d goes forward and its gradient backward; a rank counts its sends
and receives (interleaved: each of its VPP chunks).
DP (Rajbhandari et al. 2020, "ZeRO", section 7: data parallelism moves 2 psi per step as an
all-reduce, the same as a reduce-scatter of gradients + an all-gather of parameters): the fp32
grad buffer of the rank (P 4 bytes) is all-reduced; with the distributed optimizer it is
reduce-scattered and the P parameters (d bytes) are all-gathered after the step.
other: the tied word embedding's fp32 gradient all-reduce between the first and last stage
(PP > 1), and control scalars (loss 8 bytes, grad norm 4, fp16 overflow flag 4).

Time per kind: bytes x ring factor (all-reduce 2(n-1)/n, all-gather and reduce-scatter
(n-1)/n, p2p 1 on the bytes sent = half of send + receive) / bandwidth, with
`cluster.intra_node_gbps` when the group fits in one node (megatron's rank order puts TP
innermost, then DP, then PP) else `cluster.inter_node_gbps`; Gbit/s / 8 = bytes/s.
"""

from __future__ import annotations

from pretrain.config import ClusterConfig, PretrainConfig
from pretrain.plan.params import layer_params, norm_params
from pretrain.plan.state_memory import MAIN_GRAD_BYTES, PARAM_BYTES
from pretrain.plan.types import COMM_KINDS, CommEstimate, Layout, ParamCounts

CE_ALL_REDUCES = 3
"""Vocab-parallel cross-entropy: max logit, target logit, sum of exponentials (fp32)."""

SCALAR_BYTES = {"loss": 8, "grad_norm": 4, "found_inf": 4}

DDP_BUCKET_PARAMS = 40_000_000
"""megatron DDP's default bucket size with overlap_grad_reduce: max(40M, 1M x DP) params."""


def _tp_bytes(cfg: PretrainConfig, layout: Layout, pp_rank: int) -> dict[str, int]:
    """TP bytes of one pipeline stage per step."""
    if layout.tp == 1:
        return {}
    model, t = cfg.model, cfg.train
    act = t.seq_length * layout.micro_batch * model.hidden_size * PARAM_BYTES[cfg.precision]
    layers = model.num_layers // layout.pp
    first, last = pp_rank == 0, pp_rank == layout.pp - 1
    again = 1 if layout.recompute == "full" else 0
    if layout.sp:
        ag = layers * (6 + 2 * again) + (1 if first else 0) + (2 if last else 0)
        rs = layers * (4 + 2 * again) + (1 if last else 0)
        ar = 0
        if first:
            learned = model.position_embedding_type == "learned_absolute"
            ar, rs = ar + (1 if learned else 0), rs + (0 if learned else 1)
    else:
        ag = rs = 0
        ar = layers * (4 + 2 * again) + (1 if first else 0) + (1 if last else 0)
    m = _micro_batches(cfg, layout)
    ce = CE_ALL_REDUCES * t.seq_length * layout.micro_batch * 4 if last else 0
    out = {
        "tp_all_reduce": m * (ar * act + ce),
        "tp_all_gather": m * ag * act,
        "tp_reduce_scatter": m * rs * act,
    }
    if layout.sp:
        out["tp_all_reduce"] += _sp_grad_elements(cfg, layout, last) * MAIN_GRAD_BYTES
    return out


def _sp_grad_elements(cfg: PretrainConfig, layout: Layout, last: bool) -> int:
    """Replicated (sequence-parallel) parameters of a stage: norms and row-parallel biases."""
    layers = cfg.model.num_layers // layout.pp
    return layers * layer_params(cfg.model).replicated + (norm_params(cfg.model) if last else 0)


def _micro_batches(cfg: PretrainConfig, layout: Layout) -> int:
    return max(cfg.train.global_batch_size // (layout.micro_batch * layout.dp), 1)


def p2p_tensors_per_micro_batch(layout: Layout, pp_rank: int) -> int:
    """Sends + receives of one pipeline rank per micro-batch (all its virtual chunks)."""
    chunks = layout.vpp or 1
    stages = layout.pp * chunks
    count = 0
    for chunk in range(chunks):
        stage = chunk * layout.pp + pp_rank
        count += 2 * (stage > 0) + 2 * (stage < stages - 1)
    return count


def _pp_bytes(cfg: PretrainConfig, layout: Layout, pp_rank: int) -> int:
    if layout.pp == 1:
        return 0
    seq = cfg.train.seq_length // (layout.tp if layout.sp else 1)
    act = seq * layout.micro_batch * cfg.model.hidden_size * PARAM_BYTES[cfg.precision]
    tensors = p2p_tensors_per_micro_batch(layout, pp_rank)
    return tensors * _micro_batches(cfg, layout) * act


def _dp_bytes(cfg: PretrainConfig, layout: Layout, params: int) -> dict[str, int]:
    if layout.dp == 1:
        return {}
    grads = params * MAIN_GRAD_BYTES
    if layout.dist_opt:
        return {
            "dp_reduce_scatter": grads,
            "dp_all_gather": params * PARAM_BYTES[cfg.precision],
        }
    return {"dp_all_reduce": grads}


def _other_bytes(cfg: PretrainConfig, counts: ParamCounts, layout: Layout, pp_rank: int) -> int:
    scalars = SCALAR_BYTES["loss"] if layout.world > 1 else 0
    stats_group = layout.world if layout.dist_opt else layout.tp * layout.pp
    if stats_group > 1:
        scalars += SCALAR_BYTES["grad_norm"]
        if cfg.precision == "fp16":
            scalars += SCALAR_BYTES["found_inf"]
    tied = cfg.model.share_embeddings_and_output_weights and layout.pp > 1
    if tied and pp_rank in (0, layout.pp - 1):
        word = counts.padded_vocab // layout.tp * cfg.model.hidden_size
        scalars += word * MAIN_GRAD_BYTES
    return scalars


def comm_per_stage(
    cfg: PretrainConfig, counts: ParamCounts, layout: Layout
) -> list[dict[str, int]]:
    """Bytes per step by kind (COMM_KINDS) for a rank of each pipeline stage."""
    stages = []
    for pp_rank in range(layout.pp):
        kinds = dict.fromkeys(COMM_KINDS, 0)
        kinds.update(_tp_bytes(cfg, layout, pp_rank))
        kinds["pp_send_recv"] = _pp_bytes(cfg, layout, pp_rank)
        kinds.update(_dp_bytes(cfg, layout, counts.per_rank[(pp_rank, 0)]))
        kinds["other"] = _other_bytes(cfg, counts, layout, pp_rank)
        stages.append(kinds)
    return stages


def _bandwidth(cluster: ClusterConfig, span: int) -> float:
    """Bytes/s of a group whose ranks lie within `span` consecutive ranks."""
    gbps = cluster.intra_node_gbps if span <= cluster.gpus_per_node else cluster.inter_node_gbps
    return gbps * 1e9 / 8


def _ring(op: str, n: int) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def comm_seconds(
    bytes_per_step: dict[str, int], layout: Layout, cluster: ClusterConfig
) -> dict[str, float]:
    """kind -> seconds on the cluster's links (ring factors, intra- or inter-node)."""
    tp_bw = _bandwidth(cluster, layout.tp)
    dp_bw = _bandwidth(cluster, layout.tp * layout.dp)
    world_bw = _bandwidth(cluster, layout.world)
    seconds = {}
    for kind, nbytes in bytes_per_step.items():
        if kind.startswith("tp_"):
            value = nbytes * _ring(kind[3:], layout.tp) / tp_bw
        elif kind.startswith("dp_"):
            value = nbytes * _ring(kind[3:], layout.dp) / dp_bw
        elif kind == "pp_send_recv":  # p2p: the bytes sent, half of send + receive
            value = nbytes / 2 / world_bw
        else:  # the tied embedding's all-reduce between 2 stages: 2(n-1)/n = 1
            value = nbytes / world_bw
        seconds[kind] = value
    return seconds


def dp_buckets(params: int, layout: Layout, overlap: bool) -> int:
    """Gradient buckets megatron DDP makes (one without overlap_grad_reduce)."""
    if not overlap:
        return 1
    size = max(DDP_BUCKET_PARAMS, 1_000_000 * layout.dp)
    return max(1, -(-params // size))


def estimate_comm(
    cfg: PretrainConfig, counts: ParamCounts, layout: Layout, cluster: ClusterConfig
) -> CommEstimate:
    """Bytes and seconds per step on the busiest rank; the exposed (not overlapped) part.

    TP, PP and other are fully exposed (they sit between dependent compute). The DP gradient
    reduce is exposed unless `parallel.overlap_grad_reduce`: then it runs behind the backward
    pass bucket by bucket and only the last bucket (1 / buckets of it) is exposed; the
    distributed optimizer's parameter all-gather likewise with `parallel.overlap_param_gather`.
    """
    stages = comm_per_stage(cfg, counts, layout)
    busiest = max(range(layout.pp), key=lambda r: (sum(stages[r].values()), -r))
    bytes_per_step = stages[busiest]
    seconds = comm_seconds(bytes_per_step, layout, cluster)
    params = counts.per_rank[(busiest, 0)]
    grad_share = 1 / dp_buckets(params, layout, cfg.parallel.overlap_grad_reduce)
    gather_share = 1 / dp_buckets(params, layout, cfg.parallel.overlap_param_gather)
    exposed = 0.0
    for kind, value in seconds.items():
        if kind == "dp_all_gather":
            value *= gather_share
        elif kind.startswith("dp_"):
            value *= grad_share
        exposed += value
    return CommEstimate(bytes_per_step=bytes_per_step, seconds=seconds, exposed_s=exposed)
