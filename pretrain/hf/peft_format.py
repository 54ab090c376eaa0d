"""LoRA adapters (megatron TP1 state dict) -> a Hugging Face PEFT adapter folder.

`adapter_config.json` + `adapter_model.safetensors`, loadable with
`peft.PeftModel.from_pretrained(<the exported base>, DIR)`. PEFT computes, per target layer,
`y = base(x) + (lora_alpha / r) * lora_B(lora_A(dropout(x)))`, the same as ours, so each of our
adapters maps to HF modules whose output rows are the matching rows of our B:

- Llama: `linear_qkv` -> `q_proj`/`k_proj`/`v_proj` (the same lora_A for all three; lora_B's
  rows split like the weight, `mapping.split_qkv`), `linear_fc1` -> `gate_proj`/`up_proj`
  (lora_A shared, lora_B chunked in halves), `linear_proj` -> `o_proj`, `linear_fc2` ->
  `down_proj`.
- GPT-2: `linear_qkv` -> `attn.c_attn` (lora_B rows reordered to `[q | k | v]` like the weight,
  `mapping._gpt2_qkv`), `linear_proj` -> `attn.c_proj`, `linear_fc1` -> `mlp.c_fc`,
  `linear_fc2` -> `mlp.c_proj`. These are Conv1D layers, so `fan_in_fan_out=true`; PEFT's
  lora_A / lora_B are still [r, in] / [out, r] (only its merged delta is transposed).

Keys are PEFT's saved form: `base_model.model.<HF module path>.lora_A.weight` (no adapter name).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ModelConfig
from pretrain.hf import mapping

_PREFIX = "base_model.model."

LLAMA_MODULES = {
    "linear_qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "linear_proj": ("self_attn.o_proj",),
    "linear_fc1": ("mlp.gate_proj", "mlp.up_proj"),
    "linear_fc2": ("mlp.down_proj",),
}
GPT2_MODULES = {
    "linear_qkv": ("attn.c_attn",),
    "linear_proj": ("attn.c_proj",),
    "linear_fc1": ("mlp.c_fc",),
    "linear_fc2": ("mlp.c_proj",),
}
_PARENTS = {
    "linear_qkv": "self_attention",
    "linear_proj": "self_attention",
    "linear_fc1": "mlp",
    "linear_fc2": "mlp",
}


def _split_b(name: str, b: torch.Tensor, model: ModelConfig, family: str) -> list[torch.Tensor]:
    """Our B [out, r] -> the B of each HF module it maps to (rows in HF order)."""
    if name == "linear_qkv":
        if family == "llama":
            return list(mapping.split_qkv(b, model))
        return [mapping._gpt2_qkv(b, model)]
    if name == "linear_fc1" and family == "llama":
        return list(torch.chunk(b, 2, dim=0))
    return [b]


def adapter_tensors(
    sd: dict[str, torch.Tensor], model: ModelConfig, family: str
) -> dict[str, torch.Tensor]:
    """PEFT adapter_model tensors from a TP1 megatron state dict holding `lora_A`/`lora_B`."""
    modules = LLAMA_MODULES if family == "llama" else GPT2_MODULES
    root = "model.layers" if family == "llama" else "transformer.h"
    out: dict[str, torch.Tensor] = {}
    for i in range(model.num_layers):
        for name, hf_names in modules.items():
            src = f"decoder.layers.{i}.{_PARENTS[name]}.{name}."
            if src + "lora_A.weight" not in sd:
                continue
            a = sd[src + "lora_A.weight"]
            for hf_name, b in zip(
                hf_names, _split_b(name, sd[src + "lora_B.weight"], model, family), strict=True
            ):
                dst = f"{_PREFIX}{root}.{i}.{hf_name}."
                out[dst + "lora_A.weight"] = a.clone()  # one tensor per key (safetensors)
                out[dst + "lora_B.weight"] = b.clone()
    return out


def adapter_config(peft: dict[str, Any], family: str, base: str | None) -> dict[str, Any]:
    """adapter_config.json for a LoRA checkpoint's meta.json `peft` entry."""
    modules = LLAMA_MODULES if family == "llama" else GPT2_MODULES
    targets = sorted({hf for name in peft["target_modules"] for hf in modules[name]})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": int(peft["rank"]),
        "lora_alpha": float(peft["alpha"]),
        "lora_dropout": float(peft.get("dropout", 0.0)),
        "target_modules": targets,
        "fan_in_fan_out": family == "gpt2",
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_adapter(out_dir: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """adapter_model.safetensors + adapter_config.json into `out_dir`."""
    from safetensors.torch import save_file

    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def merge_for_export(
    saved: dict[str, Any],
    model_cfg: ModelConfig,
    model: torch.nn.Module,
    dtype: torch.dtype,
    cfg: Any,
    adapter_out: Path | None,
) -> Callable[[Path], None] | None:
    """A LoRA model (meta.json `saved` has `peft`): take the PEFT adapter tensors (when
    `adapter_out` is set: the returned writer puts them in a folder), then merge the adapters
    into the weights in place. A full model: no-op, None."""
    if not saved.get("peft"):
        return None
    from pretrain.hf.export import megatron_state_dict
    from pretrain.peft import merge_lora_

    writer = None
    if adapter_out is not None:
        family = mapping.hf_family(model_cfg)
        tensors = adapter_tensors(megatron_state_dict(model), model_cfg, family)
        config = adapter_config(saved["peft"], family, cfg.adapter_base)
        writer = partial(
            write_adapter, tensors={k: v.to(dtype) for k, v in tensors.items()}, config=config
        )
    merge_lora_([model])
    return writer
