"""Parameter-efficient fine-tuning (LoRA) on megatron-core's tensor-parallel linear layers.

Entry points used by the rest of the package:

- `validate_peft(cfg)`: ConfigError for bad peft.* values (called by `pretrain.validate`).
- `apply_peft(chunks, peft_cfg, seed)`: turn the unwrapped GPTModel chunks into LoRA models in
  place (before DDP wrapping and the optimizer); no-op for peft.type=none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pretrain.config import PeftConfig, PretrainConfig


def validate_peft(cfg: PretrainConfig) -> None:
    """ConfigError naming the peft.* key when a LoRA setting cannot work (no-op for none)."""
    if cfg.peft.type == "none":
        return
    raise NotImplementedError("peft.type=lora: being built")


def apply_peft(chunks: list[torch.nn.Module], peft_cfg: PeftConfig, seed: int) -> None:
    """Add adapters to `chunks` (unwrapped GPTModels) and freeze the rest; none: no-op."""
    if peft_cfg.type == "none":
        return
    raise NotImplementedError("peft.type=lora: being built")
