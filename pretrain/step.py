"""One optimizer step and one evaluation, through megatron's forward-backward schedules.

`get_forward_backward_func()` picks no-pipelining, 1F1B or interleaved 1F1B (virtual stages)
from parallel_state; micro-batch accumulation happens inside it.

Skipped steps: with fp16, megatron's dynamic loss scaler finds inf/NaN gradients, lowers the
scale and the update is skipped (normal early in training). Independently, a non-finite loss or
gradient norm (same decision on every rank: both are reduced over all ranks) skips the update:
no optimizer step, no scheduler step, gradients are discarded (zeroed at the next step); the
step and the data it consumed still count. `PRETRAIN_INJECT_NAN_AT_STEP=K` or `K1,K2` (a testing
aid) makes the loss of those steps NaN.

objective=sft (`ctx.sft_attention` set) runs `pretrain.sft.loss.sft_forward_step` instead: the
loss of a step is the mean over the target tokens of the whole global batch (sum / count over
all micro-batches and DP ranks, megatron's per-token path), and evaluation averages the same way
over all its batches.

objective=mlm runs `pretrain.mlm.loss.mlm_forward_step` (BertModel): the same per-token path
over the masked positions, and the masked-token accuracy is reduced with the loss (`Reduced`).

objective=llava runs `pretrain.vlm.loss.llava_forward_step` (LLaVAModel): sft's per-token
path over the caption tokens; the pipeline's sequence is the combined (image + text) length.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pretrain.context import Batch, TrainContext


@dataclass
class StepResult:
    """What one train_step produced (identical on every rank)."""

    loss: float
    lr: float
    grad_norm: float | None
    skipped: bool
    overflow: bool
    loss_scale: float
    data_s: float
    fwd_bwd_s: float
    optim_s: float
    target_tokens: int | None = None
    """objective=sft: loss-mask-1 labels of the global batch; mlm: its masked positions (None
    for objective=lm)."""
    accuracy: float | None = None
    """objective=mlm: share of the masked positions predicted right (None otherwise)."""


@dataclass(frozen=True)
class Reduced:
    """The loss numbers of a set of micro-batches, reduced over all ranks."""

    loss: float
    """lm: mean of micro-batch means; sft/mlm/llava: mean over the target (masked, caption)
    tokens."""
    target_tokens: int | None = None
    """sft: target tokens; mlm: masked tokens; llava: caption tokens; lm: None."""
    accuracy: float | None = None
    """mlm: masked-token accuracy; None otherwise."""


def _loss_func(loss_mask: torch.Tensor, nan: bool, output_tensor: torch.Tensor):
    losses = output_tensor.float()
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses.view(-1) * mask) / mask.sum().clamp(min=1.0)
    if nan:
        loss = loss * float("nan")
    return loss, {"loss": loss.detach().clone()}


def forward_step(data_iterator: Any, model: torch.nn.Module, nan: bool = False):
    """megatron forward_step_func: run the chunk on the next micro-batch, return loss fn."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, partial(_loss_func, batch["loss_mask"], nan)


def _nan_steps() -> set[int]:
    """Steps listed in PRETRAIN_INJECT_NAN_AT_STEP ("K" or "K1,K2,..."), a testing aid."""
    value = os.environ.get("PRETRAIN_INJECT_NAN_AT_STEP", "")
    return {int(v) for v in value.split(",") if v.strip()}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def average_loss(losses: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Mean micro-batch loss over the last-stage ranks (all ranks get the same number)."""
    if losses:
        local = torch.stack([d["loss"].float() for d in losses]).mean()
        buf = torch.stack([local.to(device), torch.ones((), device=device)])
    else:
        buf = torch.zeros(2, device=device)
    torch.distributed.all_reduce(buf)
    return float(buf[0] / buf[1])


def _step_func(ctx: TrainContext, nan: bool = False) -> Any:
    """The forward_step_func of the run's objective."""
    if ctx.objective == "mlm":
        from pretrain.mlm.loss import mlm_forward_step

        return partial(mlm_forward_step, nan=nan)
    if ctx.objective == "sft":
        from pretrain.sft.loss import sft_forward_step

        return partial(sft_forward_step, kind=ctx.sft_attention, nan=nan)
    if ctx.objective == "llava":
        from pretrain.vlm.loss import llava_forward_step
        from pretrain.vlm.model import image_seq_len

        return partial(llava_forward_step, image_seq_len=image_seq_len(ctx.cfg.vision), nan=nan)
    return partial(forward_step, nan=nan)


def reduce_losses(ctx: TrainContext, losses: list[dict[str, torch.Tensor]]) -> Reduced:
    """lm's mean of micro-batch means, sft's token mean, or mlm's token mean and accuracy."""
    if ctx.objective == "mlm":
        from pretrain.mlm.loss import reduce_mlm

        totals = reduce_mlm(losses, ctx.device, ctx.dist.dp_size)
        return Reduced(totals.loss, totals.masked_tokens, totals.accuracy)
    if ctx.objective in ("sft", "llava"):
        from pretrain.sft.loss import reduce_token_loss

        return Reduced(*reduce_token_loss(losses, ctx.device, ctx.dist.dp_size))
    return Reduced(average_loss(losses, ctx.device))


def _all_finite(value: float) -> bool:
    return math.isfinite(value)


def _clip_and_step(optimizer: Any, grad_norm: float) -> bool:
    """Clip with the already-computed norm, then step (as ChainedOptimizer.step does)."""
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "is_stub_optimizer", False):
            continue
        params = opt.get_parameters()
        if params and opt.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(
                params,
                max_norm=opt.config.clip_grad,
                total_norm=grad_norm,
                use_decoupled_grad=opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8,
            )
    return bool(optimizer.step_with_ready_grads())


def _next_batches(iterator: Any, count: int, device: torch.device) -> list[Batch]:
    return [_to_device(next(iterator), device) for _ in range(count)]


def _run_schedule(
    ctx: TrainContext, batches: list[Batch], step_func: Any, forward_only: bool
) -> list[dict[str, torch.Tensor]]:
    """megatron's forward-backward schedule (micro-batches, pipeline) over `batches`."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    seq_length, micro_batch_size = ctx.cfg.train.seq_length, ctx.cfg.train.micro_batch_size
    if ctx.sft_attention == "thd":  # a micro-batch is one row of b x s tokens (pipeline shapes)
        seq_length, micro_batch_size = seq_length * micro_batch_size, 1
    if ctx.objective == "llava":  # the language model sees the image embeddings + the text
        from pretrain.vlm.model import combined_length

        seq_length = combined_length(ctx.cfg)
    return get_forward_backward_func()(
        forward_step_func=step_func,
        data_iterator=[iter(batches) for _ in ctx.model],
        model=ctx.model,
        num_microbatches=ctx.num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def train_step(ctx: TrainContext) -> StepResult:
    """Forward-backward over all micro-batches, then a (possibly skipped) optimizer step."""
    t0 = time.perf_counter()
    batches = _next_batches(ctx.train_iterator, ctx.num_microbatches, ctx.device)
    t1 = time.perf_counter()
    for chunk in ctx.model:
        chunk.zero_grad_buffer()
    ctx.optimizer.zero_grad()
    nan = ctx.state.step + 1 in _nan_steps()
    losses = _run_schedule(ctx, batches, _step_func(ctx, nan), forward_only=False)
    reduced = reduce_losses(ctx, losses)
    loss = reduced.loss
    t2 = time.perf_counter()
    lr = float(ctx.optimizer.param_groups[0]["lr"])
    overflow = bool(ctx.optimizer.prepare_grads())
    grad_norm = None
    skipped = overflow
    if not overflow:
        grad_norm = float(ctx.optimizer.get_grad_norm())
        skipped = not (_all_finite(loss) and _all_finite(grad_norm))
        if not skipped:
            skipped = not _clip_and_step(ctx.optimizer, grad_norm)
    if not skipped:
        ctx.scheduler.step(increment=1)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    return StepResult(
        loss=loss,
        lr=lr,
        grad_norm=grad_norm,
        skipped=skipped,
        overflow=overflow,
        loss_scale=float(ctx.optimizer.get_loss_scale()),
        data_s=t1 - t0,
        fwd_bwd_s=t2 - t1,
        optim_s=t3 - t2,
        target_tokens=reduced.target_tokens,
        accuracy=reduced.accuracy,
    )


def evaluate(ctx: TrainContext) -> float | None:
    """Mean validation loss over eval.iters global batches (the same batches every time)."""
    result = evaluate_metrics(ctx)
    return None if result is None else result.loss


def evaluate_metrics(ctx: TrainContext) -> Reduced | None:
    """Validation loss (and mlm's accuracy) over eval.iters global batches.

    lm: the mean of the batches' losses; sft/mlm: the mean over every target (masked) token of
    all eval batches.
    """
    if ctx.valid_dataset is None or ctx.cfg.eval.iters <= 0:
        return None
    cfg = ctx.cfg
    iterator = ctx.make_valid_iterator()
    for chunk in ctx.model:
        chunk.eval()
    total, all_losses = 0.0, []
    with torch.no_grad():
        for _ in range(cfg.eval.iters):
            batches = _next_batches(iterator, ctx.num_microbatches, ctx.device)
            losses = _run_schedule(ctx, batches, _step_func(ctx), forward_only=True)
            if ctx.objective == "lm":
                total += average_loss(losses, ctx.device)
            all_losses.extend(losses)
    for chunk in ctx.model:
        chunk.train()
    if ctx.objective == "lm":
        return Reduced(total / cfg.eval.iters)
    return reduce_losses(ctx, all_losses)
