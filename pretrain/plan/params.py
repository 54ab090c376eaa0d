"""Exact parameter counts of the megatron-core GPTModel this repo builds, per (PP, TP) rank.

The model is `pretrain.model.build_model`: megatron's GPTModel with the local layer spec on
CPU (`get_gpt_layer_local_spec` with `compat.SequenceParallelNorm` norms) or the Transformer
Engine spec on GPU. Both specs hold the same parameters (TE fuses the input norm into
`linear_qkv` as `layer_norm_weight`/`layer_norm_bias`, the same tensors), so one count fits both.

What one rank holds (megatron-core 0.16, `tensor_parallel/layers.py`, `gpt_model.py`):
- column-parallel linears (`linear_qkv`, `linear_fc1`, the output layer): weight and bias split
  over TP (output rows / tp);
- row-parallel linears (`linear_proj`, `linear_fc2`): weight split over TP (input columns / tp),
  bias replicated on every TP rank (it is added after the all-reduce);
- norms (LayerNorm weight + bias, RMSNorm weight): replicated;
- `VocabParallelEmbedding`: padded vocab / tp rows; the learned position table
  (`torch.nn.Embedding(max_position_embeddings, hidden)`) is replicated over TP;
- the first pipeline stage (first virtual chunk) holds the embeddings, the last stage (last
  chunk) the final norm and the output layer; a tied output layer on PP > 1 is a copy of the
  word embedding on the last stage (megatron's `shared` weight, all-reduced with the first
  stage's): counted on that rank (it is memory), not in `total`;
- layers split evenly: a rank holds layers / PP (VPP chunks of layers / (PP x VPP) each).

`total` counts each parameter once with the vocabulary padded for the layout's TP
(`model_cfg.padded_vocab_size(vocab_size, layout.tp)`): it equals
`pretrain.model.count_parameters(model_cfg, padded_vocab)` and the sum of the `counted_here`
parameters of a real run (pretrain.train.parameter_counts) at that TP.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config import ModelConfig
from pretrain.plan.types import Layout, ParamCounts


@dataclass(frozen=True)
class LayerParams:
    """One transformer layer's parameters: split over TP, and replicated on every TP rank."""

    sharded: int
    """Column-parallel weights + biases, row-parallel weights (whole layer, divided by TP)."""
    replicated: int
    """Norms and row-parallel biases (each TP rank holds all of them)."""

    def per_tp_rank(self, tp: int) -> int:
        """What one TP rank of the layer holds."""
        return self.sharded // tp + self.replicated

    @property
    def total(self) -> int:
        """The whole layer, each parameter once."""
        return self.sharded + self.replicated


def norm_params(model_cfg: ModelConfig) -> int:
    """One norm: LayerNorm weight + bias, RMSNorm weight only."""
    return model_cfg.hidden_size * (2 if model_cfg.normalization == "LayerNorm" else 1)


def layer_params(model_cfg: ModelConfig) -> LayerParams:
    """Parameters of one transformer layer (attention + MLP + their two norms)."""
    h, ffn = model_cfg.hidden_size, model_cfg.ffn_size()
    qkv_out = h + 2 * model_cfg.kv_heads() * model_cfg.head_dim()
    fc1_out = ffn * (2 if model_cfg.activation == "swiglu" else 1)
    bias = model_cfg.add_bias_linear
    column = h * qkv_out + h * fc1_out + ((qkv_out + fc1_out) if bias else 0)
    row_weights = h * h + ffn * h
    row_biases = 2 * h if bias else 0
    return LayerParams(
        sharded=column + row_weights, replicated=row_biases + 2 * norm_params(model_cfg)
    )


def _stage_params(
    model_cfg: ModelConfig, padded_vocab: int, layout: Layout, pp_rank: int, tp: int
) -> int:
    """Parameters held by one rank of pipeline stage `pp_rank` (any TP rank: all equal)."""
    h = model_cfg.hidden_size
    layers = model_cfg.num_layers // layout.pp
    count = layers * layer_params(model_cfg).per_tp_rank(tp)
    word = padded_vocab // tp * h
    tied = model_cfg.share_embeddings_and_output_weights
    if pp_rank == 0:
        count += word
        if model_cfg.position_embedding_type == "learned_absolute":
            count += model_cfg.max_position_embeddings * h
    if pp_rank == layout.pp - 1:
        count += norm_params(model_cfg)
        if not tied or layout.pp > 1:  # untied output layer, or the tied copy on PP > 1
            count += word
    return count


def count_params(model_cfg: ModelConfig, vocab_size: int, layout: Layout) -> ParamCounts:
    """Total and per-(pp_rank, tp_rank) parameters of GPTModel for `layout`.

    Args:
        model_cfg: the model architecture.
        vocab_size: the tokenizer's vocabulary (padded here for the layout's TP).
        layout: the parallel layout (tp, pp; vpp does not change what a rank holds).
    """
    padded = model_cfg.padded_vocab_size(vocab_size, layout.tp)
    h = model_cfg.hidden_size
    layer = layer_params(model_cfg)
    embedding = padded * h
    if model_cfg.position_embedding_type == "learned_absolute":
        embedding += model_cfg.max_position_embeddings * h
    output = 0 if model_cfg.share_embeddings_and_output_weights else padded * h
    total = model_cfg.num_layers * layer.total + embedding + output + norm_params(model_cfg)
    per_rank = {
        (pp_rank, tp_rank): _stage_params(model_cfg, padded, layout, pp_rank, layout.tp)
        for pp_rank in range(layout.pp)
        for tp_rank in range(layout.tp)
    }
    return ParamCounts(
        total=total,
        per_rank=per_rank,
        padded_vocab=padded,
        embedding=embedding,
        output=output,
        per_layer=layer.total,
    )
