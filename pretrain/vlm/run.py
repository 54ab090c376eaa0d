"""The objective=llava hooks `pretrain.train` dispatches to (model, data, start, sample).

Imported by pretrain/train.py at module level: nothing here imports megatron before a hook runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from pretrain.config import PretrainConfig, SampleConfig

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger("pretrain")


def build_chunks(
    cfg: PretrainConfig, vocab_size: int, manifests: list[dict[str, Any]]
) -> list[torch.nn.Module]:
    """This rank's LLaVAModel chunks, the stage's parameters frozen (before DDP)."""
    from pretrain.special_tokens import piece_ids
    from pretrain.vlm.model import build_llava_model

    key = "vision.image_token"
    image_id = piece_ids(manifests[0], {key: cfg.vision.image_token})[key]
    return build_llava_model(cfg, vocab_size, image_token_id=image_id)


def flops_per_token(cfg: PretrainConfig, padded_vocab: int) -> float:
    """Training FLOPs per text token (`pretrain.vlm.model.llava_flops_per_token`)."""
    from pretrain.vlm.model import llava_flops_per_token

    return llava_flops_per_token(cfg, padded_vocab)


def build_datasets(ctx: TrainContext, num_samples: tuple[int, int, int]) -> list[Any]:
    """[train, valid, test] image-text datasets (`pretrain.vlm.dataset`)."""
    from pretrain.vlm.dataset import build_llava_datasets

    return build_llava_datasets(ctx.cfg, ctx.data_manifests, ctx.tokenizer, num_samples)


def started_fresh(ctx: TrainContext) -> bool:
    """True when no checkpoint was resumed or loaded (checkpoint.load) at step 0."""
    from pretrain.checkpoint.loader import choose_checkpoint

    return ctx.state.step == 0 and choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir)[0] is None


def after_load(ctx: TrainContext) -> None:
    """After `checkpoint.load_at_start`: a fresh llava run with vision.language_checkpoint
    takes its language model's weights from that text GPT checkpoint (collective), then the
    optimizer's main copies are refreshed from the model. No-op for other objectives."""
    if ctx.objective != "llava" or not ctx.cfg.vision.language_checkpoint:
        return
    if not started_fresh(ctx):
        log.info("vision.language_checkpoint is not used: the run continues a checkpoint")
        return
    from pretrain.vlm.language_init import load_language_weights

    load_language_weights(
        ctx.model, ctx.cfg.vision.language_checkpoint, ctx.cfg, ctx.dist, ctx.data_manifests
    )
    ctx.optimizer.reload_model_params()


def end_of_run_sample(ctx: TrainContext, sample: SampleConfig) -> str | None:
    """Captions of a few validation images (`pretrain.vlm.sample.caption_sample`)."""
    from pretrain.vlm.sample import caption_sample

    return caption_sample(ctx, sample)
