"""Parameter-efficient fine-tuning (LoRA) on megatron-core's tensor-parallel linear layers.

Entry points used by the rest of the package:

- `validate_peft(cfg)`: ConfigError for bad peft.* values (called by `pretrain.validate`).
- `apply_peft(chunks, peft_cfg, seed)`: turn the unwrapped GPTModel chunks into LoRA models in
  place (before DDP wrapping and the optimizer); no-op for peft.type=none.
- `merge_lora_(chunks)`: fold the adapters into the base weights per TP rank, removing them.

The adapter math under TP/SP is derived in `pretrain.peft.lora`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pretrain.peft.lora import ADAPTER_KEYS, add_adapter, has_adapter, init_seed, is_adapter_key
from pretrain.peft.lora import merge_adapter_ as _merge_adapter_

if TYPE_CHECKING:
    from pretrain.config import PeftConfig, PretrainConfig

log = logging.getLogger("pretrain.peft")

TARGETS = {
    "linear_qkv": ("self_attention", "column"),
    "linear_proj": ("self_attention", "row"),
    "linear_fc1": ("mlp", "column"),
    "linear_fc2": ("mlp", "row"),
}
"""Target module name -> (its parent in a TransformerLayer, column/row parallel)."""


def validate_peft(cfg: PretrainConfig) -> None:
    """ConfigError naming the peft.* key when a LoRA setting cannot work (no-op for none)."""
    from pretrain.config import ConfigError

    p = cfg.peft
    if p.type == "none":
        return
    if p.type != "lora":
        raise ConfigError(f"peft.type={p.type!r}: choose none or lora")
    if not isinstance(p.rank, int) or p.rank < 1:
        raise ConfigError(f"peft.rank={p.rank!r} must be an integer >= 1")
    if not p.alpha > 0:
        raise ConfigError(f"peft.alpha={p.alpha!r} must be > 0 (the adapter scale is alpha/rank)")
    if not 0.0 <= p.dropout < 1.0:
        raise ConfigError(f"peft.dropout={p.dropout!r} must be in [0, 1)")
    targets = list(p.target_modules)
    unknown = sorted(set(targets) - set(TARGETS))
    if not targets or unknown:
        raise ConfigError(
            f"peft.target_modules={targets}: give a non-empty subset of {list(TARGETS)}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    _validate_base(cfg)


def _validate_base(cfg: PretrainConfig) -> None:
    from pretrain.config import ConfigError

    if cfg.checkpoint.resume == "auto" and _run_has_lora_checkpoint(Path(cfg.run.dir)):
        return  # resumes its own LoRA checkpoint (its base is recorded there)
    if not cfg.checkpoint.load or not cfg.checkpoint.weights_only:
        raise ConfigError(
            "peft=lora needs a base model: set checkpoint.load=BASE checkpoint.weights_only=true "
            f"(now checkpoint.load={cfg.checkpoint.load!r}, "
            f"checkpoint.weights_only={cfg.checkpoint.weights_only}), or resume a run.dir that "
            "holds a LoRA checkpoint (checkpoint.resume=auto)"
        )


def _run_has_lora_checkpoint(run_dir: Path) -> bool:
    from pretrain.checkpoint import layout
    from pretrain.checkpoint.meta import read_meta

    latest = layout.read_latest(run_dir) if run_dir.is_dir() else None
    if latest is None:
        return False
    try:
        return bool(read_meta(latest).get("peft"))
    except Exception:  # a damaged meta.json is reported by the loader, naming the file
        return True


def lora_enabled(chunks: list[torch.nn.Module]) -> bool:
    """Whether the (unwrapped) chunks carry LoRA adapters."""
    return any(has_adapter(m) for chunk in chunks for m in chunk.modules())


def _targets(chunk: torch.nn.Module, names: list[str]):
    """(global layer number, 'parent.name', module, kind) of each target layer of a chunk."""
    decoder = getattr(chunk, "decoder", None)
    for layer in getattr(decoder, "layers", []):
        for name in names:
            parent, kind = TARGETS[name]
            module = getattr(getattr(layer, parent, None), name, None)
            if module is None or getattr(module, "weight", None) is None:
                raise ValueError(f"layer {layer.layer_number} has no {parent}.{name} weight")
            yield layer.layer_number, f"{parent}.{name}", module, kind


def apply_peft(chunks: list[torch.nn.Module], peft_cfg: PeftConfig, seed: int) -> None:
    """Add adapters to `chunks` (unwrapped GPTModels) and freeze the rest; none: no-op.

    Every parameter except the adapters gets requires_grad=False, so megatron's DDP and
    optimizer hold only the adapters.
    """
    if peft_cfg.type == "none":
        return
    for chunk in chunks:
        for param in chunk.parameters():
            param.requires_grad_(False)
        for layer_number, name, module, kind in _targets(chunk, list(peft_cfg.target_modules)):
            add_adapter(
                module,
                kind,
                peft_cfg.rank,
                peft_cfg.alpha,
                peft_cfg.dropout,
                init_seed(seed, layer_number, name),
            )
    trainable, total = parameter_split(chunks)
    log.info(
        "LoRA r=%d alpha=%g on %s: %d trainable of %d parameters on this rank (%.3f%%)",
        peft_cfg.rank,
        peft_cfg.alpha,
        ",".join(peft_cfg.target_modules),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )


def parameter_split(chunks: list[torch.nn.Module]) -> tuple[int, int]:
    """(trainable, total) parameter elements of this rank's chunks."""
    params = {id(p): p for chunk in chunks for p in chunk.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora_(chunks: list[torch.nn.Module]) -> int:
    """Fold every adapter into its base weight in place (per TP rank); returns how many."""
    merged = 0
    for chunk in chunks:
        for module in list(chunk.modules()):
            if has_adapter(module):
                _merge_adapter_(module)
                merged += 1
    return merged


__all__ = [
    "ADAPTER_KEYS",
    "TARGETS",
    "apply_peft",
    "is_adapter_key",
    "lora_enabled",
    "merge_lora_",
    "parameter_split",
    "validate_peft",
]
