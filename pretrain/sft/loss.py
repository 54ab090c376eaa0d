"""SFT loss through megatron's per-token path: sum over target tokens / target-token count.

The model is built with `TransformerConfig(calculate_per_token_loss=True)` (objective=sft), so
megatron's schedule neither divides a micro-batch's loss by its token count nor by the number
of micro-batches: the loss function returns (loss_sum, num_tokens, {...}), the schedule adds up
num_tokens over the micro-batches and `finalize_model_grads` all-reduces it over the
data-parallel ranks and scales the gradients by 1 / total. The gradient is thus the gradient of

    loss = sum of -log p(target) over the mask-1 labels of the global batch
           / number of mask-1 labels of the global batch,

and `reduce_token_loss` reports exactly that number (not a mean of micro-batch means).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from pretrain.sft.attention import model_inputs


def token_loss_func(loss_mask: torch.Tensor, nan: bool, output_tensor: torch.Tensor):
    """(sum of target losses, number of targets, reported values) of one micro-batch."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    if nan:
        loss_sum = loss_sum * float("nan")
    return (
        loss_sum,
        num_tokens,
        {"loss_sum": loss_sum.detach().clone(), "num_tokens": num_tokens.detach().clone()},
    )


def sft_forward_step(data_iterator: Any, model: torch.nn.Module, kind: str, nan: bool = False):
    """megatron forward_step_func for SFT micro-batches (attention `kind`, see attention.py)."""
    batch = next(data_iterator)
    inputs = model_inputs(batch, kind)
    output = model(
        inputs.pop("input_ids"),
        inputs.pop("position_ids"),
        inputs.pop("attention_mask"),
        **inputs,
    )
    return output, partial(token_loss_func, batch["loss_mask"], nan)


def token_loss_totals(losses: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """[loss sum, target tokens, 1 if this rank has losses] over this rank's micro-batches."""
    if not losses:
        return torch.zeros(3, dtype=torch.float64, device=device)
    total = sum(float(d["loss_sum"]) for d in losses)
    count = sum(int(d["num_tokens"]) for d in losses)
    return torch.tensor([total, count, 1.0], dtype=torch.float64, device=device)


def reduce_token_loss(
    losses: list[dict[str, torch.Tensor]], device: torch.device, dp_size: int
) -> tuple[float, int]:
    """(mean loss over the target tokens of the global batch, its target-token count).

    Collective over all ranks. The last-stage ranks of every TP group report the same sums
    (TP replicas), so the count is divided by the replicas per DP rank; the ratio is unaffected.
    A global batch without any target token gives NaN (the step is then skipped).
    """
    buf = token_loss_totals(losses, device)
    torch.distributed.all_reduce(buf)
    total, count, ranks = (float(v) for v in buf.tolist())
    replicas = max(ranks / dp_size, 1.0)
    tokens = int(round(count / replicas))
    return (total / count if count > 0 else float("nan")), tokens
