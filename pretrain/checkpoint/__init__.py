"""Sharded checkpoints on megatron-core `dist_checkpointing`: save, resume, keep-last, async.

The public face (every call is collective: all ranks call it):

- `load_at_start(ctx)`: once, after the model, optimizer, scheduler and TrainState exist;
  resumes `${run.dir}/latest` or starts from `checkpoint.load`;
- `maybe_save(ctx, force=False)`: after every optimizer step;
- `finalize(ctx)`: at the end (save_at_end, wait for background saves, PREEMPTED marker);
- `load_model_weights(chunks, ckpt_dir)` / `save_model_weights(chunks, out_dir, meta)`:
  model-only checkpoints (Hugging Face export and import);
- `CheckpointError`: a checkpoint cannot be used as asked (a `ConfigError`: exit 2).

Inside: `saver` (when and where to save, commit, rotation), `loader` (which checkpoint,
compatibility checks, restore), `state` (the sharded state dict), `meta` (meta.json and resume
checks), `layout` (on-disk names, `latest`, completeness), `safety` (refusing files that run
code), `async_save` (background writes), `weights` (model-only). See README.md.
"""

from pretrain.checkpoint.loader import load_at_start, load_checkpoint
from pretrain.checkpoint.meta import CheckpointError
from pretrain.checkpoint.saver import Saver, finalize, maybe_save, save_checkpoint
from pretrain.checkpoint.weights import load_model_weights, save_model_weights

__all__ = [
    "CheckpointError",
    "Saver",
    "finalize",
    "load_at_start",
    "load_checkpoint",
    "load_model_weights",
    "maybe_save",
    "save_checkpoint",
    "save_model_weights",
]
