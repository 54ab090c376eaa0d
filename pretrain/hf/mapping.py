"""megatron-core GPTModel (TP1/PP1 state dict) <-> Hugging Face layouts, in both directions.

The model's shape is our `ModelConfig` (the same object meta.json records) plus the tokenizer's
vocabulary size. Two targets, chosen from the model config:

- **Llama** (`LlamaForCausalLM`): RMSNorm + SwiGLU + RoPE. megatron's fused `linear_qkv` holds,
  for each of the G query groups, its heads' queries followed by the group's key and value:
  rows `[q_(g,0) .. q_(g,h/G-1), k_g, v_g]` x head_dim. `linear_fc1` is `cat(gate, up)`
  (megatron applies SiLU to the first half). Both use rotate-half RoPE, so no permutation.
- **GPT-2** (`GPT2LMHeadModel`): LayerNorm + GELU + learned positions, multi-head attention.
  `linear_qkv` is per head `[q_h, k_h, v_h]`; GPT-2's `c_attn` is `[all q | all k | all v]`,
  and its Conv1D layers store weights transposed (in, out).

The embedding and output rows beyond the tokenizer's vocabulary (megatron pads the table for
TP divisibility) are dropped. Norm weights are read under the local-spec names
(`input_layernorm`) or Transformer Engine's fused names (`linear_qkv.layer_norm_weight`).
Import (`from_llama`) is the inverse of `to_llama`, padding the vocabulary rows back.
"""

from __future__ import annotations

from typing import Any

import torch

from pretrain.checkpoint.meta import CheckpointError
from pretrain.config import ModelConfig


def hf_family(model: ModelConfig) -> str:
    """'llama' or 'gpt2'; CheckpointError for combinations neither architecture has."""
    rope = model.position_embedding_type == "rope"
    if model.normalization == "RMSNorm" and model.activation == "swiglu" and rope:
        return "llama"
    if model.normalization == "LayerNorm" and model.activation == "gelu" and not rope:
        if model.kv_heads() != model.num_attention_heads:
            raise CheckpointError(
                "GPT-2 has no grouped-query attention: model.num_query_groups must be unset"
            )
        return "gpt2"
    raise CheckpointError(
        f"cannot export normalization={model.normalization}, activation={model.activation}, "
        f"position_embedding_type={model.position_embedding_type}: Hugging Face export "
        "supports RMSNorm+swiglu+rope (Llama) or LayerNorm+gelu+learned_absolute (GPT-2)"
    )


def _get(sd: dict[str, torch.Tensor], *names: str) -> torch.Tensor:
    for name in names:
        if name in sd:
            return sd[name]
    raise CheckpointError(f"checkpoint has none of {names}")


def _norms(sd: dict, prefix: str) -> dict[str, torch.Tensor]:
    out = {
        "in.weight": _get(
            sd,
            f"{prefix}input_layernorm.weight",
            f"{prefix}self_attention.linear_qkv.layer_norm_weight",
        ),
        "post.weight": _get(
            sd, f"{prefix}pre_mlp_layernorm.weight", f"{prefix}mlp.linear_fc1.layer_norm_weight"
        ),
    }
    for key, names in (
        (
            "in.bias",
            (f"{prefix}input_layernorm.bias", f"{prefix}self_attention.linear_qkv.layer_norm_bias"),
        ),
        (
            "post.bias",
            (f"{prefix}pre_mlp_layernorm.bias", f"{prefix}mlp.linear_fc1.layer_norm_bias"),
        ),
    ):
        found = [sd[n] for n in names if n in sd]
        if found:
            out[key] = found[0]
    return out


def split_qkv(
    qkv: torch.Tensor, model: ModelConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split megatron's grouped `linear_qkv` weight (or bias) into q, k, v (HF head order)."""
    groups, dim = model.kv_heads(), model.head_dim()
    per_group = model.num_attention_heads // groups
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, per_group + 2, dim, *rest)
    q = grouped[:, :per_group].reshape(model.num_attention_heads * dim, *rest)
    k = grouped[:, per_group].reshape(groups * dim, *rest)
    v = grouped[:, per_group + 1].reshape(groups * dim, *rest)
    return q, k, v


def to_llama(
    sd: dict[str, torch.Tensor], model: ModelConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """megatron GPTModel state dict -> LlamaForCausalLM state dict."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(model.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        norms = _norms(sd, src)
        out[dst + "input_layernorm.weight"] = norms["in.weight"]
        out[dst + "post_attention_layernorm.weight"] = norms["post.weight"]
        for kind in _kinds(model):
            q, k, v = split_qkv(sd[f"{src}self_attention.linear_qkv.{kind}"], model)
            attn = dst + "self_attn."
            out[attn + f"q_proj.{kind}"], out[attn + f"k_proj.{kind}"] = q, k
            out[attn + f"v_proj.{kind}"] = v
            out[attn + f"o_proj.{kind}"] = sd[f"{src}self_attention.linear_proj.{kind}"]
            gate, up = torch.chunk(sd[f"{src}mlp.linear_fc1.{kind}"], 2, dim=0)
            out[dst + f"mlp.gate_proj.{kind}"], out[dst + f"mlp.up_proj.{kind}"] = gate, up
            out[dst + f"mlp.down_proj.{kind}"] = sd[f"{src}mlp.linear_fc2.{kind}"]
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if not model.share_embeddings_and_output_weights:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def _kinds(model: ModelConfig) -> tuple[str, ...]:
    return ("weight", "bias") if model.add_bias_linear else ("weight",)


def from_llama(hf: dict[str, torch.Tensor], model: ModelConfig, padded_vocab: int) -> dict:
    """LlamaForCausalLM state dict -> megatron GPTModel (local spec) state dict (inverse)."""

    def pad(weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(padded_vocab, weight.shape[1], dtype=weight.dtype)
        out[: weight.shape[0]] = weight
        return out

    groups, dim = model.kv_heads(), model.head_dim()
    per_group = model.num_attention_heads // groups
    sd = {"embedding.word_embeddings.weight": pad(hf["model.embed_tokens.weight"])}
    for i in range(model.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        sd[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        sd[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        for kind in _kinds(model):
            q, k, v = (hf[f"{src}self_attn.{n}_proj.{kind}"] for n in ("q", "k", "v"))
            rest = q.shape[1:]
            grouped = torch.cat(
                [
                    q.reshape(groups, per_group, dim, *rest),
                    k.reshape(groups, 1, dim, *rest),
                    v.reshape(groups, 1, dim, *rest),
                ],
                dim=1,
            )
            sd[f"{dst}self_attention.linear_qkv.{kind}"] = grouped.reshape(-1, *rest)
            sd[f"{dst}self_attention.linear_proj.{kind}"] = hf[f"{src}self_attn.o_proj.{kind}"]
            gate, up = hf[f"{src}mlp.gate_proj.{kind}"], hf[f"{src}mlp.up_proj.{kind}"]
            sd[f"{dst}mlp.linear_fc1.{kind}"] = torch.cat([gate, up], dim=0)
            sd[f"{dst}mlp.linear_fc2.{kind}"] = hf[f"{src}mlp.down_proj.{kind}"]
    sd["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    if not model.share_embeddings_and_output_weights:
        sd["output_layer.weight"] = pad(hf["lm_head.weight"])
    return {k: v.contiguous() for k, v in sd.items()}


def _gpt2_qkv(tensor: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    q, k, v = split_qkv(tensor, model)
    return torch.cat([q, k, v], dim=0)


def to_gpt2(
    sd: dict[str, torch.Tensor], model: ModelConfig, vocab_size: int
) -> dict[str, torch.Tensor]:
    """megatron GPTModel state dict -> GPT2LMHeadModel state dict (Conv1D weights transposed)."""
    h, ffn = model.hidden_size, model.ffn_size()
    out = {
        "transformer.wte.weight": sd["embedding.word_embeddings.weight"][:vocab_size],
        "transformer.wpe.weight": sd["embedding.position_embeddings.weight"],
    }

    def bias(name: str, size: int) -> torch.Tensor:
        ref = sd["embedding.word_embeddings.weight"]
        return sd.get(name, torch.zeros(size, dtype=ref.dtype))

    for i in range(model.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        norms = _norms(sd, src)
        for ours, theirs in (("in", "ln_1"), ("post", "ln_2")):
            out[dst + f"{theirs}.weight"] = norms[f"{ours}.weight"]
            out[dst + f"{theirs}.bias"] = norms.get(f"{ours}.bias", torch.zeros(h))
        qkv_w = _gpt2_qkv(sd[f"{src}self_attention.linear_qkv.weight"], model)
        out[dst + "attn.c_attn.weight"] = qkv_w.t()
        qkv_b = bias(f"{src}self_attention.linear_qkv.bias", 3 * h)
        out[dst + "attn.c_attn.bias"] = _gpt2_qkv(qkv_b, model)
        out[dst + "attn.c_proj.weight"] = sd[f"{src}self_attention.linear_proj.weight"].t()
        out[dst + "attn.c_proj.bias"] = bias(f"{src}self_attention.linear_proj.bias", h)
        out[dst + "mlp.c_fc.weight"] = sd[f"{src}mlp.linear_fc1.weight"].t()
        out[dst + "mlp.c_fc.bias"] = bias(f"{src}mlp.linear_fc1.bias", ffn)
        out[dst + "mlp.c_proj.weight"] = sd[f"{src}mlp.linear_fc2.weight"].t()
        out[dst + "mlp.c_proj.bias"] = bias(f"{src}mlp.linear_fc2.bias", h)
    out["transformer.ln_f.weight"] = sd["decoder.final_layernorm.weight"]
    out["transformer.ln_f.bias"] = sd.get("decoder.final_layernorm.bias", torch.zeros(h))
    if not model.share_embeddings_and_output_weights:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(
    model: ModelConfig,
    vocab_size: int,
    family: str,
    special: dict[str, int | None],
    dtype: torch.dtype,
) -> Any:
    """The transformers config object of the exported model."""
    from transformers import GPT2Config, LlamaConfig

    ids = {k: special.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    tied = model.share_embeddings_and_output_weights
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=model.hidden_size,
            intermediate_size=model.ffn_size(),
            num_hidden_layers=model.num_layers,
            num_attention_heads=model.num_attention_heads,
            num_key_value_heads=model.kv_heads(),
            head_dim=model.head_dim(),
            hidden_act="silu",
            max_position_embeddings=model.max_position_embeddings,
            rms_norm_eps=model.layernorm_epsilon,
            tie_word_embeddings=tied,
            rope_parameters={"rope_type": "default", "rope_theta": float(model.rotary_base)},
            attention_bias=model.add_bias_linear,
            mlp_bias=model.add_bias_linear,
            architectures=["LlamaForCausalLM"],
            dtype=dtype,
            **ids,
        )
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=model.max_position_embeddings,
        n_embd=model.hidden_size,
        n_layer=model.num_layers,
        n_head=model.num_attention_heads,
        n_inner=model.ffn_size(),
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=model.layernorm_epsilon,
        tie_word_embeddings=tied,
        architectures=["GPT2LMHeadModel"],
        dtype=dtype,
        **ids,
    )


def model_config_from_hf(config: Any) -> ModelConfig:
    """Our ModelConfig for a transformers LlamaConfig (CheckpointError if not representable)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise CheckpointError(f"head_dim={head_dim} x heads={heads} != hidden_size: unsupported")
    if bool(getattr(config, "attention_bias", False)) != bool(getattr(config, "mlp_bias", False)):
        raise CheckpointError("attention_bias and mlp_bias differ: unsupported")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type={rope.get('rope_type')} (RoPE scaling) is unsupported")
    return ModelConfig(
        name="hf-import",
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=heads,
        num_query_groups=config.num_key_value_heads,
        ffn_hidden_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(rope.get("rope_theta", getattr(config, "rope_theta", 10000))),
        normalization="RMSNorm",
        activation="swiglu",
        add_bias_linear=bool(getattr(config, "attention_bias", False)),
        share_embeddings_and_output_weights=bool(config.tie_word_embeddings),
        vocab_size=config.vocab_size,
        layernorm_epsilon=config.rms_norm_eps,
    )
