"""BERT chunks on megatron-core: `BertModel` with the local layer spec (objective=mlm).

Megatron's BERT is pre-LayerNorm: a norm before attention and before the MLP of every layer, a
final norm after the last layer, no norm on the embeddings, and a masked-LM head of dense ->
GELU -> LayerNorm -> the (tied) output layer with a bias. No binary (next-sentence) head and no
token-type embeddings: RoBERTa-style training on windows of packed documents needs neither.

Like the GPT chunks (pretrain/model.py) the CPU initial weights are identical for every TP, PP
and VPP layout: transformer layers draw from a seed per global layer number, and the head's
dense layer from its own seed. Every norm is `compat.SequenceParallelNorm`, so TP+SP works on
the local spec (megatron's torch-norm fallback refuses sequence parallelism).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from pretrain.config import ModelConfig, ParallelConfig, Precision
from pretrain.model import (
    _INIT_SEED_STRIDE,
    _block_spec,
    _encoder_or_decoder,
    _reinit_output_layer,
    _seeded_layer_class,
    build_transformer_config,
    chunk_stages,
)


def build_bert_layer_spec():
    """megatron's local BERT layer spec (padding attention mask), with seeded layers and
    sequence-parallel-capable norms; returns (layer spec, final norm class)."""
    from megatron.core.models.bert import bert_layer_specs

    from pretrain.compat import SequenceParallelNorm

    spec = copy.deepcopy(bert_layer_specs.bert_layer_local_spec)
    spec.module = _seeded_layer_class()
    spec.submodules.input_layernorm = SequenceParallelNorm
    spec.submodules.pre_mlp_layernorm = SequenceParallelNorm
    return spec, SequenceParallelNorm


def _block_spec_for_bert(config, layer_spec, final_norm, stage):
    """The block spec (with our final norm) that BertModel also reads as a layer spec.

    BertModel's attention-mask check reads `spec.submodules.self_attention`, i.e. it expects a
    layer spec; given one, TransformerBlock would pick megatron's torch-norm fallback as the
    final norm, which refuses sequence parallelism. The block spec carries the layer's
    submodules for that check.
    """
    block = _block_spec(config, layer_spec, final_norm, stage)
    block.submodules = layer_spec.submodules
    return block


@contextlib.contextmanager
def _head_norm() -> Iterator[None]:
    """BertLMHead builds its LayerNorm from `bert_lm_head.LNImpl` inside BertModel.__init__
    (megatron's torch-norm fallback, which refuses sequence parallelism): while the model is
    built, that name is our SequenceParallelNorm; restored afterwards."""
    from megatron.core.models.bert import bert_lm_head

    from pretrain.compat import SequenceParallelNorm

    saved = bert_lm_head.LNImpl
    bert_lm_head.LNImpl = SequenceParallelNorm
    try:
        yield
    finally:
        bert_lm_head.LNImpl = saved


def _init_lm_head(model, config) -> None:
    """The masked-LM head's dense layer: a layout-free CPU init from its own seed."""
    if not config.use_cpu_initialization:
        return
    head = model.lm_head
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(torch.initial_seed() + _INIT_SEED_STRIDE * (config.num_layers + 2))
        weight = torch.empty_like(head.dense.weight, dtype=torch.float32)
        config.init_method(weight)
        head.dense.weight.copy_(weight.to(head.dense.weight.dtype))
        head.dense.bias.zero_()


def build_bert_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    vocab_size: int,
    precision: Precision = "fp32",
    activation_recompute: str = "none",
    use_cpu_initialization: bool | None = None,
) -> list[torch.nn.Module]:
    """This rank's BertModel chunks (one per virtual pipeline stage), unwrapped.

    Same contract as `pretrain.model.build_model` (padded vocab, CUDA placement, dtype); the
    loss is megatron's per-token path (calculate_per_token_loss: the mean over the masked
    tokens of the global batch, see pretrain/mlm/loss.py).
    """
    from megatron.core import parallel_state
    from megatron.core.models.bert.bert_model import BertModel

    config = build_transformer_config(
        model_cfg,
        parallel_cfg,
        precision,
        activation_recompute,
        use_cpu_initialization,
        calculate_per_token_loss=True,
    )
    layer_spec, final_norm = build_bert_layer_spec()
    padded = model_cfg.padded_vocab_size(vocab_size, parallel_cfg.tensor_model_parallel_size)
    chunks = []
    for stage, pre_process, post_process in chunk_stages(parallel_cfg):
        with _head_norm():
            model = BertModel(
                config=config,
                num_tokentypes=0,
                transformer_layer_spec=_block_spec_for_bert(config, layer_spec, final_norm, stage),
                vocab_size=padded,
                max_sequence_length=model_cfg.max_position_embeddings,
                pre_process=pre_process,
                post_process=post_process,
                share_embeddings_and_output_weights=model_cfg.share_embeddings_and_output_weights,
                position_embedding_type=model_cfg.position_embedding_type,
                add_binary_head=False,
                vp_stage=stage,
            )
        model.model_type = _encoder_or_decoder()
        if model.post_process:
            _init_lm_head(model, config)
            if not model_cfg.share_embeddings_and_output_weights and config.use_cpu_initialization:
                _reinit_output_layer(
                    model,
                    config,
                    padded,
                    parallel_state.get_tensor_model_parallel_rank(),
                    parallel_cfg.tensor_model_parallel_size,
                )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks


def mlm_flops_per_token(model_cfg: ModelConfig, padded_vocab: int, seq_length: int) -> float:
    """Training FLOPs per token of the BERT model (approximate, for TFLOP/s and MFU).

    GPT's estimate (`pretrain.model.flops_per_token`: 6N over the matmuls plus the attention
    scores, which it already counts over the full, here bidirectional, sequence) plus the
    head's dense h x h matmul (6 h^2); the logits are computed at every position, as in GPT.
    Norms, biases and the GELU are left out, as there.
    """
    from pretrain.model import flops_per_token

    h = model_cfg.hidden_size
    return flops_per_token(model_cfg, padded_vocab, seq_length) + 6.0 * h * h
