"""Weight mapping from a megatron-core GPTModel (TP1/PP1 state dict) to Hugging Face layouts.

Two targets, chosen from the model config:

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pretrain.ckpt_meta import CheckpointError


@dataclass
class Arch:
    """What the mapping needs to know about the model."""

    num_layers: int
    hidden_size: int
    num_heads: int
    kv_heads: int
    ffn_size: int
    vocab_size: int
    max_positions: int
    normalization: str
    activation: str
    position_embedding_type: str
    add_bias_linear: bool
    tied: bool
    eps: float
    rotary_base: float

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_heads

    def family(self) -> str:
        """'llama' or 'gpt2'; CheckpointError for combinations neither architecture has."""
        rope = self.position_embedding_type == "rope"
        if self.normalization == "RMSNorm" and self.activation == "swiglu" and rope:
            return "llama"
        if self.normalization == "LayerNorm" and self.activation == "gelu" and not rope:
            if self.kv_heads != self.num_heads:
                raise CheckpointError(
                    "GPT-2 has no grouped-query attention: model.num_query_groups must be unset"
                )
            return "gpt2"
        raise CheckpointError(
            f"cannot export normalization={self.normalization}, activation={self.activation}, "
            f"position_embedding_type={self.position_embedding_type}: Hugging Face export "
            "supports RMSNorm+swiglu+rope (Llama) or LayerNorm+gelu+learned_absolute (GPT-2)"
        )


def arch_from_config(model: dict[str, Any], vocab_size: int) -> Arch:
    """Arch from the `model` section of a checkpoint's resolved config (meta.json)."""
    heads = model["num_attention_heads"]
    return Arch(
        num_layers=model["num_layers"],
        hidden_size=model["hidden_size"],
        num_heads=heads,
        kv_heads=model.get("num_query_groups") or heads,
        ffn_size=model.get("ffn_hidden_size") or 4 * model["hidden_size"],
        vocab_size=vocab_size,
        max_positions=model["max_position_embeddings"],
        normalization=model["normalization"],
        activation=model["activation"],
        position_embedding_type=model["position_embedding_type"],
        add_bias_linear=model["add_bias_linear"],
        tied=model["share_embeddings_and_output_weights"],
        eps=model["layernorm_epsilon"],
        rotary_base=model.get("rotary_base", 10000),
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


def split_qkv(qkv: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split megatron's grouped `linear_qkv` weight (or bias) into q, k, v (HF head order)."""
    groups, per_group, dim = arch.kv_heads, arch.num_heads // arch.kv_heads, arch.head_dim
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, per_group + 2, dim, *rest)
    q = grouped[:, :per_group].reshape(arch.num_heads * dim, *rest)
    k = grouped[:, per_group].reshape(groups * dim, *rest)
    v = grouped[:, per_group + 1].reshape(groups * dim, *rest)
    return q, k, v


def to_llama(sd: dict[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """megatron GPTModel state dict -> LlamaForCausalLM state dict."""
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][: arch.vocab_size]}
    for i in range(arch.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        norms = _norms(sd, src)
        out[dst + "input_layernorm.weight"] = norms["in.weight"]
        out[dst + "post_attention_layernorm.weight"] = norms["post.weight"]
        for kind in ("weight", "bias") if arch.add_bias_linear else ("weight",):
            q, k, v = split_qkv(sd[f"{src}self_attention.linear_qkv.{kind}"], arch)
            attn = dst + "self_attn."
            out[attn + f"q_proj.{kind}"], out[attn + f"k_proj.{kind}"] = q, k
            out[attn + f"v_proj.{kind}"] = v
            out[attn + f"o_proj.{kind}"] = sd[f"{src}self_attention.linear_proj.{kind}"]
            gate, up = torch.chunk(sd[f"{src}mlp.linear_fc1.{kind}"], 2, dim=0)
            out[dst + f"mlp.gate_proj.{kind}"], out[dst + f"mlp.up_proj.{kind}"] = gate, up
            out[dst + f"mlp.down_proj.{kind}"] = sd[f"{src}mlp.linear_fc2.{kind}"]
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if not arch.tied:
        out["lm_head.weight"] = sd["output_layer.weight"][: arch.vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def _gpt2_qkv(tensor: torch.Tensor, arch: Arch) -> torch.Tensor:
    q, k, v = split_qkv(tensor, arch)
    return torch.cat([q, k, v], dim=0)


def to_gpt2(sd: dict[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """megatron GPTModel state dict -> GPT2LMHeadModel state dict (Conv1D weights transposed)."""
    h, ffn = arch.hidden_size, arch.ffn_size
    out = {
        "transformer.wte.weight": sd["embedding.word_embeddings.weight"][: arch.vocab_size],
        "transformer.wpe.weight": sd["embedding.position_embeddings.weight"],
    }

    def bias(name: str, size: int) -> torch.Tensor:
        ref = sd["embedding.word_embeddings.weight"]
        return sd.get(name, torch.zeros(size, dtype=ref.dtype))

    for i in range(arch.num_layers):
        src, dst = f"decoder.layers.{i}.", f"transformer.h.{i}."
        norms = _norms(sd, src)
        for ours, theirs in (("in", "ln_1"), ("post", "ln_2")):
            out[dst + f"{theirs}.weight"] = norms[f"{ours}.weight"]
            out[dst + f"{theirs}.bias"] = norms.get(f"{ours}.bias", torch.zeros(h))
        qkv_w = _gpt2_qkv(sd[f"{src}self_attention.linear_qkv.weight"], arch)
        out[dst + "attn.c_attn.weight"] = qkv_w.t()
        qkv_b = bias(f"{src}self_attention.linear_qkv.bias", 3 * h)
        out[dst + "attn.c_attn.bias"] = _gpt2_qkv(qkv_b, arch)
        out[dst + "attn.c_proj.weight"] = sd[f"{src}self_attention.linear_proj.weight"].t()
        out[dst + "attn.c_proj.bias"] = bias(f"{src}self_attention.linear_proj.bias", h)
        out[dst + "mlp.c_fc.weight"] = sd[f"{src}mlp.linear_fc1.weight"].t()
        out[dst + "mlp.c_fc.bias"] = bias(f"{src}mlp.linear_fc1.bias", ffn)
        out[dst + "mlp.c_proj.weight"] = sd[f"{src}mlp.linear_fc2.weight"].t()
        out[dst + "mlp.c_proj.bias"] = bias(f"{src}mlp.linear_fc2.bias", h)
    out["transformer.ln_f.weight"] = sd["decoder.final_layernorm.weight"]
    out["transformer.ln_f.bias"] = sd.get("decoder.final_layernorm.bias", torch.zeros(h))
    if not arch.tied:
        out["lm_head.weight"] = sd["output_layer.weight"][: arch.vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config(arch: Arch, family: str, special: dict[str, int | None], dtype: torch.dtype) -> Any:
    """The transformers config object of the exported model."""
    from transformers import GPT2Config, LlamaConfig

    ids = {k: special.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if family == "llama":
        return LlamaConfig(
            vocab_size=arch.vocab_size,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.ffn_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            hidden_act="silu",
            max_position_embeddings=arch.max_positions,
            rms_norm_eps=arch.eps,
            tie_word_embeddings=arch.tied,
            rope_parameters={"rope_type": "default", "rope_theta": float(arch.rotary_base)},
            attention_bias=arch.add_bias_linear,
            mlp_bias=arch.add_bias_linear,
            architectures=["LlamaForCausalLM"],
            dtype=dtype,
            **ids,
        )
    return GPT2Config(
        vocab_size=arch.vocab_size,
        n_positions=arch.max_positions,
        n_embd=arch.hidden_size,
        n_layer=arch.num_layers,
        n_head=arch.num_heads,
        n_inner=arch.ffn_size,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=arch.eps,
        tie_word_embeddings=arch.tied,
        architectures=["GPT2LMHeadModel"],
        dtype=dtype,
        **ids,
    )
