"""Memory per GPU: weights, gradients, optimizer (state_memory.py), activations, overhead.

Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models" (arXiv:2205.05198), section 4 and Table 2. Per layer and micro-batch, in
bytes, with 16-bit activations, 1-byte dropout masks and the softmax stored in 16 bits:

    no parallelism                 s b h (34 + 5 a s / h)
    tensor parallel t              s b h (10 + 24 / t + 5 a s / (h t))
    + sequence parallel            s b h / t (34 + 5 a s / h)
    + selective recompute          s b h / t * 34              (the 5 a s / h term is recomputed)
    full recompute                 2 s b h (/ t with SP)       (the layer input only)

`korthikanti_layer_bytes` is that table; `layer_bytes` is the same itemised count (each tensor
autograd keeps, see `_replicated` / `_sharded`) generalised to this repo's models, which gives the
table back exactly for the paper's model (`paper_shape`). The generalisations, each from what
megatron-core 0.16 (local spec, as `pretrain.model` builds it) saves for backward:
- fp32 activations (precision=fp32) take 4 bytes per element, masks stay 1 byte.
- Dropout 0 (every preset) keeps no mask: `torch.nn.functional.dropout(p=0)` returns its input,
  so the 2 s b h hidden-dropout masks, the a s^2 b attention mask and the dropout output
  (2 a s^2 b, then the same tensor as the softmax output) are not stored.
- The softmax runs in fp32 (`attention_softmax_in_fp32=True`, megatron's default): with 16-bit
  activations autograd keeps the fp32 softmax output (4 a s^2 b) and its 16-bit cast for the
  attention-times-V matmul (2 a s^2 b).
- GQA: unfused attention expands K and V to all heads (`repeat_interleave`) before the matmuls,
  which save the expanded copies (s b h each); a fused (flash) kernel or selective recompute
  (the checkpoint keeps the core attention's inputs) keeps them at s b kv_hidden.
- SwiGLU: the first MLP linear is 2 f wide; autograd keeps its output (2 f), silu(gate) (f) and
  the product (f): 4 s b f elements against GeLU's 2 s b f (fc1 output, GeLU output; 16 s b h
  bytes at f = 4h as in the paper).
- Fused attention (`fused_attention=True`, e.g. Transformer Engine's flash attention) keeps no
  s^2 term, only the fp32 log-sum-exp (4 a s b). Default False: the conservative paper count.

The pipeline schedule multiplies this by the micro-batches in flight (Narayanan et al. 2021,
"Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
arXiv:2104.04473, section 2.2): with 1F1B pipeline rank r holds min(p - r, m) micro-batches of
its L/p layers, so the first stage holds about L layers' worth once m >= p; the interleaved
schedule (v chunks) keeps 2 (p - r - 1) + (v - 1) p + 1 chunk-forwards (megatron-core's warm-up
count, capped at m v), i.e. L (1 + (p - 1) / (p v)) layers' worth on the first stage
(Korthikanti et al. 2022, section 4.2.3). Full recompute adds one layer's full activations (the
one being recomputed) once per rank. The last stage also keeps the loss' logits: the fp32 softmax
of the vocab-parallel cross entropy (4 s b V / t) plus the output layer's logits in the
activation dtype alive with it (e s b V / t), and the inputs of the final norm and output layer.
The most loaded rank is the maximum over pipeline ranks of these sums (usually the first stage;
the last one for a large vocabulary and few micro-batches in flight). Its static part is the
most loaded rank of `static_memory`, so the total is an upper bound when those differ.
Transient buffers of backward (a layer's activation gradients) are left to the overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config import ClusterConfig, PretrainConfig
from pretrain.plan.layout import num_microbatches, padded_vocab
from pretrain.plan.state_memory import PARAM_BYTES, static_memory
from pretrain.plan.types import Layout, MemoryEstimate, ParamCounts

GIB = 2**30


@dataclass(frozen=True)
class LayerShape:
    """What one transformer layer's stored activations depend on."""

    seq: int
    micro_batch: int
    hidden: int
    heads: int
    kv_hidden: int
    """Key/value width: kv heads x head dim (= hidden without GQA)."""
    ffn: int
    swiglu: bool
    value_bytes: int
    """Bytes of one activation element (2 or 4)."""
    hidden_dropout: bool
    attention_dropout: bool
    softmax_fp32: bool = True
    fused_attention: bool = False


def layer_shape(cfg: PretrainConfig, layout: Layout, fused_attention: bool = False) -> LayerShape:
    """The LayerShape of `cfg`'s model at the layout's micro-batch size."""
    m = cfg.model
    return LayerShape(
        seq=cfg.train.seq_length,
        micro_batch=layout.micro_batch,
        hidden=m.hidden_size,
        heads=m.num_attention_heads,
        kv_hidden=m.kv_heads() * m.head_dim(),
        ffn=m.ffn_size(),
        swiglu=m.activation == "swiglu",
        value_bytes=PARAM_BYTES[cfg.precision],  # activations in the training dtype
        hidden_dropout=m.hidden_dropout > 0,
        attention_dropout=m.attention_dropout > 0,
        fused_attention=fused_attention,
    )


def paper_shape(seq: int, micro_batch: int, hidden: int, heads: int) -> LayerShape:
    """Korthikanti et al.'s GPT layer: 16-bit, MHA, GeLU 4h, dropout on, 16-bit softmax."""
    return LayerShape(
        seq, micro_batch, hidden, heads, hidden, 4 * hidden, False, 2, True, True, False, False
    )


def korthikanti_layer_bytes(
    s: int, b: int, h: int, a: int, t: int = 1, sp: bool = False, recompute: str = "none"
) -> float:
    """Korthikanti et al. 2022, Table 2 (and eq. 1-2): bytes per layer per micro-batch."""
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    score = 0.0 if recompute == "selective" else 5 * a * s / h
    if sp:
        return s * b * h / t * (34 + score)
    return s * b * h * (10 + 24 / t + score / t)


def _replicated(sh: LayerShape) -> int:
    """Bytes a TP rank keeps whole without SP (split over TP with SP): the inputs of the two
    norms, of the QKV linear and of the first MLP linear, and the two hidden-dropout masks."""
    sbh = sh.seq * sh.micro_batch * sh.hidden
    return 4 * sh.value_bytes * sbh + (2 * sbh if sh.hidden_dropout else 0)


def _score_bytes_per_element(sh: LayerShape) -> int:
    """Bytes per a s^2 b element: softmax output (+ its 16-bit cast) (+ dropout mask, output)."""
    e = sh.value_bytes
    fp32 = sh.softmax_fp32 or e == 4
    kept = (4 if fp32 else 2) + (e if fp32 and e == 2 else 0)
    return kept + (1 + e if sh.attention_dropout else 0)


def _sharded(sh: LayerShape, selective: bool) -> int:
    """Bytes split over TP: Q, K, V, the attention output, the MLP's inner activations and the
    attention scores (none under selective recompute; log-sum-exp only when fused)."""
    s, b, e = sh.seq, sh.micro_batch, sh.value_bytes
    kv = sh.hidden if not (sh.fused_attention or selective) else sh.kv_hidden
    attention = e * s * b * (2 * sh.hidden + 2 * kv)
    mlp = e * s * b * sh.ffn * (4 if sh.swiglu else 2)
    if selective:
        scores = 0
    elif sh.fused_attention:
        scores = 4 * sh.heads * s * b
    else:
        scores = _score_bytes_per_element(sh) * sh.heads * s * s * b
    return attention + mlp + scores


def layer_bytes(sh: LayerShape, tp: int, sp: bool, recompute: str) -> float:
    """Activation bytes one layer keeps for backward for one micro-batch (see module doc)."""
    if recompute == "full":
        return sh.value_bytes * sh.seq * sh.micro_batch * sh.hidden / (tp if sp else 1)
    return _replicated(sh) / (tp if sp else 1) + _sharded(sh, recompute == "selective") / tp


def in_flight(rank: int, pp: int, vpp: int | None, microbatches: int) -> int:
    """Forwards (of one model chunk each) pipeline rank `rank` holds at its peak."""
    if pp == 1:
        return 1
    if not vpp or vpp == 1:
        return min(pp - rank, microbatches)
    warmup = 2 * (pp - rank - 1) + (vpp - 1) * pp
    return min(warmup + 1, microbatches * vpp)


def _head_bytes(sh: LayerShape, layout: Layout, vocab_rows: int) -> float:
    """Last stage: the loss' logits (fp32 softmax + logits) and the final norm/output inputs."""
    sb = sh.seq * sh.micro_batch
    logits = (4 + sh.value_bytes) * sb * vocab_rows / layout.tp
    inputs = 2 * sh.value_bytes * sb * sh.hidden / (layout.tp if layout.sp else 1)
    return logits + inputs


def stage_activation_bytes(
    cfg: PretrainConfig,
    layout: Layout,
    *,
    vocab_size: int | None = None,
    fused_attention: bool = False,
) -> list[int]:
    """Peak activation bytes of each pipeline rank (index = pipeline rank)."""
    sh = layer_shape(cfg, layout, fused_attention)
    per_layer = layer_bytes(sh, layout.tp, layout.sp, layout.recompute)
    recomputing = layer_bytes(sh, layout.tp, layout.sp, "none") if layout.recompute == "full" else 0
    chunk_layers = cfg.model.num_layers / (layout.pp * (layout.vpp or 1))
    m = num_microbatches(cfg, layout)
    head = _head_bytes(sh, layout, padded_vocab(cfg, layout, vocab_size))
    out = []
    for rank in range(layout.pp):
        held = in_flight(rank, layout.pp, layout.vpp, m) * chunk_layers * per_layer + recomputing
        out.append(int(held + (head if rank == layout.pp - 1 else 0)))
    return out


def activation_bytes(
    cfg: PretrainConfig,
    layout: Layout,
    *,
    vocab_size: int | None = None,
    fused_attention: bool = False,
) -> int:
    """Activation bytes of the most loaded pipeline rank (the maximum over stages).

    Args:
        cfg: model, train.seq_length / global_batch_size and precision are read.
        layout: TP, PP, VPP, SP, micro-batch and recompute (DP sets the micro-batch count).
        vocab_size: the tokenizer's vocabulary (default model.vocab_size), padded here.
        fused_attention: a flash-attention kernel keeps no attention scores.
    """
    return max(
        stage_activation_bytes(cfg, layout, vocab_size=vocab_size, fused_attention=fused_attention)
    )


def estimate_memory(
    cfg: PretrainConfig,
    counts: ParamCounts,
    layout: Layout,
    cluster: ClusterConfig,
    *,
    fused_attention: bool = False,
) -> MemoryEstimate:
    """Bytes per GPU on the most loaded rank, by part.

    Weights, gradients and optimizer come from `pretrain.plan.state_memory.static_memory`,
    activations from `activation_bytes` (with `counts.padded_vocab`), the overhead is
    `cluster.overhead_gib`.
    """
    weights, gradients, optimizer = static_memory(counts, layout, cfg.precision, cfg.optim)
    activations = activation_bytes(
        cfg, layout, vocab_size=counts.padded_vocab, fused_attention=fused_attention
    )
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        overhead=int(cluster.overhead_gib * GIB),
    )
