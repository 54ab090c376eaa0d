"""Model-only checkpoints: load a checkpoint's weights into model chunks; save weights alone.

Used by the Hugging Face export (any saved layout -> one TP1/PP1 model) and import (a model-only
`iter_0000000/` that any layout loads with `checkpoint.weights_only=true`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import layout, meta, state, verify
from pretrain.checkpoint.async_save import prepare_dist_checkpointing


def load_model_weights(
    chunks: list[torch.nn.Module], ckpt_dir: Path, verify_checksums: bool = True, part: str = "all"
) -> None:
    """Fill `chunks` (unwrapped GPTModels of any layout) from a checkpoint's model state.

    The checkpoint is verified first (`verify.inspect`: files present and complete, checksums,
    nothing that would run code) and its tensors must be finite: a CheckpointError names the
    file otherwise. megatron reshards on load. Collective when torch.distributed runs several
    processes. `part` (`state.PARTS`): all tensors, or a LoRA model's base or adapters.
    """
    verify.inspect(ckpt_dir, verify_checksums)
    prepare_dist_checkpointing()
    request = state.model_sharded_state_dict(chunks, part)
    loaded = verify.read_tensors(request, ckpt_dir)
    for index, chunk in enumerate(chunks):
        state.load_model_part(chunk, loaded[state.model_key(index, len(chunks))], part)


def load_lora_model_weights(
    chunks: list[torch.nn.Module], ckpt_dir: Path, saved: dict[str, Any], seed: int
) -> None:
    """A LoRA checkpoint into plain chunks: adapters added, its base (checked) then adapters."""
    from pretrain.checkpoint import adapters
    from pretrain.peft import apply_peft

    apply_peft(chunks, adapters.peft_config_of(saved["peft"]), seed)
    base = adapters.check_base(saved["peft"], ckpt_dir)
    load_model_weights(chunks, base, part="base")
    load_model_weights(chunks, ckpt_dir, part="adapters")


def save_model_weights(
    chunks: list[torch.nn.Module], out_dir: Path, record: dict[str, Any], step: int = 0
) -> Path:
    """Save the chunks' weights as `out_dir/iter_<step>` with meta.json `record`, then `latest`.

    Written under a temporary name and renamed when complete (single process).
    """
    from megatron.core import dist_checkpointing

    final = out_dir / layout.iter_dir_name(step)
    tmp = out_dir / (final.name + layout.TMP_SUFFIX)
    tmp.mkdir(parents=True, exist_ok=False)
    prepare_dist_checkpointing()
    dist_checkpointing.save(state.model_sharded_state_dict(chunks), str(tmp))
    meta.write_meta(tmp, record)
    error = verify.record_checksums(tmp)
    if error is not None:
        raise error
    os.replace(tmp, final)
    layout.fsync_dir(out_dir)
    layout.write_latest(out_dir, final.name)
    return final
