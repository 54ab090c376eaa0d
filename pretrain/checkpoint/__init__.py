"""Sharded checkpoints on megatron-core `dist_checkpointing`: save, resume, keep-last, async.

The public face (every call is collective: all ranks call it):

- `load_at_start(ctx)`: once, after the model, optimizer, scheduler and TrainState exist;
  resumes `${run.dir}/latest` or starts from `checkpoint.load`;
- `maybe_save(ctx, force=False)`: after every optimizer step;
- `finalize(ctx)`: at the end (save_at_end, wait for background saves, PREEMPTED marker);
- `load_model_weights(chunks, ckpt_dir)` / `save_model_weights(chunks, out_dir, meta)`:
  model-only checkpoints (Hugging Face export and import);
- `CheckpointError`: a checkpoint cannot be used as asked (a `ConfigError`: exit 2), e.g.
  `DamagedCheckpoint` (naming the damaged file) or `UnsafeCheckpoint` (a file that would run
  code); `CheckpointWriteError` (exit 74: disk full) and `NonFiniteWeights` (exit 65) end a run
  whose checkpoint cannot or must not be written (`errors`).

Inside: `saver` (when and where to save, commit, rotation), `loader` (which checkpoint, the
fallback past damaged ones, compatibility checks, restore), `state` (the sharded state dict),
`meta` (meta.json and resume checks), `layout` (on-disk names, `latest`, completeness),
`safety` (refusing files that run code), `verify` (checksums, damage checks, guarded reads),
`finite` (NaN/Inf guards), `write_errors` (disk full), `collective` (agreeing across ranks),
`async_save` (background writes), `weights` (model-only), `adapters` (LoRA checkpoints: adapters
only + a path/sha256 reference to the base). See docs/checkpoints.md.
"""

from pretrain.checkpoint.errors import (
    CheckpointError,
    CheckpointWriteError,
    DamagedCheckpoint,
    NonFiniteWeights,
    UnsafeCheckpoint,
)
from pretrain.checkpoint.loader import load_at_start, load_checkpoint
from pretrain.checkpoint.saver import Saver, finalize, maybe_save, save_checkpoint
from pretrain.checkpoint.weights import load_model_weights, save_model_weights

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "DamagedCheckpoint",
    "NonFiniteWeights",
    "Saver",
    "UnsafeCheckpoint",
    "finalize",
    "load_at_start",
    "load_checkpoint",
    "load_model_weights",
    "maybe_save",
    "save_checkpoint",
    "save_model_weights",
]
