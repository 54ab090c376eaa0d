"""megatron-core BertModel (objective=mlm, TP1/PP1 state dict) -> `MegatronBertForMaskedLM`.

Why MegatronBert: megatron's BERT is pre-LayerNorm (a norm before attention and before the MLP
of every layer, a final norm after the last layer, no norm on the embeddings). transformers'
`BertForMaskedLM` / `RobertaForMaskedLM` are post-LayerNorm with an embedding LayerNorm, so no
weight mapping makes them compute the same function; `MegatronBertForMaskedLM` (model_type
`megatron-bert`, loaded by `AutoModelForMaskedLM` and the `fill-mask` pipeline) has exactly
megatron's layout: `attention.ln`, `ln` (pre-MLP), `encoder.ln` (final), and the masked-LM head
dense -> GELU -> LayerNorm -> decoder (+ bias).

Mapping: word and position embeddings; token-type embeddings are zeros (we train none, the
table has one row); `linear_qkv` is per head `[q_h, k_h, v_h]` (`mapping.split_qkv`);
`linear_proj` -> `attention.output.dense`; `linear_fc1`/`linear_fc2` -> `intermediate.dense` /
`output.dense`; `lm_head.dense`/`layer_norm` -> `cls.predictions.transform`; the decoder is the
(tied, or untied `output_layer`) embedding with `output_layer.bias`. Vocabulary rows megatron
padded for TP divisibility are dropped. Architectures MegatronBert cannot compute (RoPE,
RMSNorm, SwiGLU, grouped-query attention) are refused with a CheckpointError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint.meta import CheckpointError
from pretrain.config import ModelConfig
from pretrain.hf.mapping import split_qkv

CLASS_NAME = "MegatronBertForMaskedLM"


def check_bert_exportable(model: ModelConfig) -> None:
    """CheckpointError naming each model key MegatronBert cannot represent."""
    problems = []
    if model.position_embedding_type != "learned_absolute":
        problems.append(f"model.position_embedding_type={model.position_embedding_type}")
    if model.normalization != "LayerNorm":
        problems.append(f"model.normalization={model.normalization}")
    if model.activation != "gelu":
        problems.append(f"model.activation={model.activation}")
    if model.kv_heads() != model.num_attention_heads:
        problems.append(f"model.num_query_groups={model.num_query_groups}")
    if model.head_dim() * model.num_attention_heads != model.hidden_size:
        problems.append("model.hidden_size not divisible by model.num_attention_heads")
    if problems:
        raise CheckpointError(
            f"cannot export this objective=mlm checkpoint as {CLASS_NAME}: "
            f"{', '.join(problems)}; the Hugging Face BERT export needs learned_absolute "
            "positions, LayerNorm, gelu and multi-head attention (num_query_groups unset)"
        )


def to_megatron_bert(
    sd: dict[str, torch.Tensor], model: ModelConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """megatron BertModel state dict -> MegatronBertForMaskedLM state dict."""
    check_bert_exportable(model)
    h, ffn = model.hidden_size, model.ffn_size()

    def bias(name: str, size: int) -> torch.Tensor:
        return sd[name] if name in sd else torch.zeros(size)  # add_bias_linear=false

    emb = sd["embedding.word_embeddings.weight"]
    out = {
        "bert.embeddings.word_embeddings.weight": emb[:vocab_size],
        "bert.embeddings.position_embeddings.weight": sd["embedding.position_embeddings.weight"],
        "bert.embeddings.token_type_embeddings.weight": torch.zeros(1, h, dtype=emb.dtype),
    }
    for i in range(model.num_layers):
        src, dst = f"encoder.layers.{i}.", f"bert.encoder.layer.{i}."
        attn = src + "self_attention."
        out[dst + "attention.ln.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "attention.ln.bias"] = sd[src + "input_layernorm.bias"]
        q, k, v = split_qkv(sd[attn + "linear_qkv.weight"], model)
        qb, kb, vb = split_qkv(bias(attn + "linear_qkv.bias", 3 * h), model)
        for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            out[dst + f"attention.self.{name}.weight"] = w
            out[dst + f"attention.self.{name}.bias"] = b
        out[dst + "attention.output.dense.weight"] = sd[attn + "linear_proj.weight"]
        out[dst + "attention.output.dense.bias"] = bias(attn + "linear_proj.bias", h)
        out[dst + "ln.weight"] = sd[src + "pre_mlp_layernorm.weight"]
        out[dst + "ln.bias"] = sd[src + "pre_mlp_layernorm.bias"]
        out[dst + "intermediate.dense.weight"] = sd[src + "mlp.linear_fc1.weight"]
        out[dst + "intermediate.dense.bias"] = bias(src + "mlp.linear_fc1.bias", ffn)
        out[dst + "output.dense.weight"] = sd[src + "mlp.linear_fc2.weight"]
        out[dst + "output.dense.bias"] = bias(src + "mlp.linear_fc2.bias", h)
    out["bert.encoder.ln.weight"] = sd["encoder.final_layernorm.weight"]
    out["bert.encoder.ln.bias"] = sd["encoder.final_layernorm.bias"]
    head = "cls.predictions."
    out[head + "transform.dense.weight"] = sd["lm_head.dense.weight"]
    out[head + "transform.dense.bias"] = sd["lm_head.dense.bias"]
    out[head + "transform.LayerNorm.weight"] = sd["lm_head.layer_norm.weight"]
    out[head + "transform.LayerNorm.bias"] = sd["lm_head.layer_norm.bias"]
    out[head + "bias"] = sd["output_layer.bias"][:vocab_size]
    out[head + "decoder.bias"] = out[head + "bias"]  # tied to `bias` only with tied embeddings
    if not model.share_embeddings_and_output_weights:
        out[head + "decoder.weight"] = sd["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def megatron_bert_config(
    model: ModelConfig, vocab_size: int, special: dict[str, Any], dtype: torch.dtype
) -> Any:
    """The transformers MegatronBertConfig of the exported model (dropout off, as trained)."""
    from transformers import MegatronBertConfig

    return MegatronBertConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_attention_heads,
        intermediate_size=model.ffn_size(),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=model.max_position_embeddings,
        type_vocab_size=1,
        layer_norm_eps=model.layernorm_epsilon,
        pad_token_id=special.get("pad_token_id"),
        bos_token_id=special.get("bos_token_id"),
        eos_token_id=special.get("eos_token_id"),
        tie_word_embeddings=model.share_embeddings_and_output_weights,
        architectures=[CLASS_NAME],
        dtype=dtype,
    )


def build_hf_bert(
    model_cfg: ModelConfig,
    vocab: int,
    megatron_sd: dict[str, torch.Tensor],
    special: dict[str, Any],
    dtype: torch.dtype,
) -> torch.nn.Module:
    """A MegatronBertForMaskedLM holding the BertModel's weights (CheckpointError if unmapped)."""
    from transformers import MegatronBertForMaskedLM

    state = {k: v.to(dtype) for k, v in to_megatron_bert(megatron_sd, model_cfg, vocab).items()}
    hf_model = MegatronBertForMaskedLM(megatron_bert_config(model_cfg, vocab, special, dtype))
    hf_model = hf_model.to(dtype)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = model_cfg.share_embeddings_and_output_weights
    tied_keys = {"cls.predictions.decoder.weight"} if tied else set()
    missing = [k for k in missing if k not in tied_keys]
    if missing or unexpected:
        raise CheckpointError(f"HF mapping mismatch: missing={missing} unexpected={unexpected}")
    hf_model.tie_weights()
    return hf_model.eval()


def load_bert(ckpt_dir: Path, saved: dict[str, Any]) -> tuple[ModelConfig, torch.nn.Module]:
    """A TP1/PP1 BertModel with an objective=mlm checkpoint's weights (megatron reshards)."""
    from pretrain import parallel
    from pretrain.checkpoint import load_model_weights, meta
    from pretrain.config import ParallelConfig
    from pretrain.mlm.model import build_bert_model

    model_cfg = meta.model_config_from_meta(saved)
    check_bert_exportable(model_cfg)  # before any weight is read
    if saved.get("peft"):
        raise CheckpointError(f"{ckpt_dir}: LoRA checkpoints of objective=mlm cannot be exported")
    if not torch.distributed.is_initialized():
        parallel.init_distributed(ParallelConfig(), seed=saved["config"].get("seed", 1234))
    chunks = build_bert_model(
        model_cfg, ParallelConfig(), saved["arch"]["vocab_size"], saved["precision"]
    )
    load_model_weights(chunks, ckpt_dir)
    chunks[0].eval()
    return model_cfg, chunks[0]


def fill_mask(out_dir: Path, text: str, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """The transformers `fill-mask` pipeline of the exported folder on `text` (a mask each).

    One list of top-k predictions (score, token, token_str, sequence) per mask in `text`.
    """
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(out_dir), dtype=torch.float32)
    result = fill(text, top_k=top_k)
    return result if result and isinstance(result[0], list) else [result]
