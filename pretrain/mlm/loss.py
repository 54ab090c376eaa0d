"""objective=mlm forward step and loss: cross entropy over the masked positions only.

BertModel (pretrain/mlm/model.py) is called without labels, so the last stage returns its
vocab-parallel logits [b, s, V/tp]; `mlm_loss_func` computes megatron's vocab-parallel cross
entropy on them and keeps the positions of the loss mask (the selected tokens). It follows
megatron's per-token path like objective=sft (pretrain/sft/loss.py): (loss sum, masked-token
count, reported values), so the gradient is that of

    loss = sum of -log p(original token) over the masked positions of the global batch
           / number of masked positions of the global batch,

and `reduce_mlm` reports that number and the masked-token accuracy: the share of masked
positions whose original token has the highest logit. Under TP each rank holds a slice of
the vocabulary, so the top logit is an all-reduce MAX over the TP group and the label's logit
an all-reduce SUM (only its owner contributes); a tie with the maximum counts as correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from pretrain.sft.loss import token_loss_totals


def _tp_group() -> Any:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def masked_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool [b, s]: the label has the top logit (vocab-parallel `logits` [b, s, V/tp]).

    Collective over the tensor-parallel group (two all-reduces).
    """
    from megatron.core import parallel_state

    with torch.no_grad():
        local = logits.detach().float()
        part = local.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * part
        top = local.max(dim=-1).values
        owned = (labels >= start) & (labels < start + part)
        index = (labels - start).clamp(0, part - 1).unsqueeze(-1)
        label_logit = torch.where(owned, local.gather(-1, index).squeeze(-1), 0.0)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            group = _tp_group()
            torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
            torch.distributed.all_reduce(label_logit, group=group)
        return label_logit >= top


def mlm_loss_func(
    labels: torch.Tensor, loss_mask: torch.Tensor, nan: bool, output_tensor: torch.Tensor
):
    """(sum of masked-token losses, masked tokens, reported values) of one micro-batch."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    mask = loss_mask.float()
    correct = (masked_correct(output_tensor, labels).float() * mask).sum()
    # after masked_correct: the cross entropy subtracts the row max from its input in place
    losses = vocab_parallel_cross_entropy(output_tensor.float(), labels)
    loss_sum = torch.sum(losses.reshape(-1) * mask.reshape(-1))
    num_tokens = mask.sum().to(torch.int)
    if nan:
        loss_sum = loss_sum * float("nan")
    return (
        loss_sum,
        num_tokens,
        {
            "loss_sum": loss_sum.detach().clone(),
            "num_tokens": num_tokens.detach().clone(),
            "correct": correct.detach(),
        },
    )


def mlm_forward_step(data_iterator: Any, model: torch.nn.Module, nan: bool = False):
    """megatron forward_step_func for objective=mlm micro-batches (MLM_BATCH_KEYS)."""
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["attention_mask"])
    if isinstance(output, tuple):  # last stage: (logits, binary-head logits = None)
        output = output[0]
    return output, partial(mlm_loss_func, batch["labels"], batch["loss_mask"], nan)


@dataclass(frozen=True)
class MlmTotals:
    """The masked-LM numbers of a set of micro-batches (identical on every rank)."""

    loss: float
    """Mean cross entropy over the masked tokens (NaN when there is none)."""
    masked_tokens: int
    """Masked (selected) positions of the global batch(es)."""
    accuracy: float
    """Share of the masked positions predicted right (NaN when there is none)."""


def reduce_mlm(
    losses: list[dict[str, torch.Tensor]], device: torch.device, dp_size: int
) -> MlmTotals:
    """Sum loss, tokens and correct predictions over all ranks; collective (one all-reduce).

    As in `pretrain.sft.loss.reduce_token_loss`, the last-stage ranks of a TP group report the
    same sums, so the counts are divided by the replicas per DP rank (ratios are unaffected).
    """
    correct = sum(float(d["correct"]) for d in losses)
    buf = torch.cat(
        [
            token_loss_totals(losses, device),
            torch.tensor([correct], dtype=torch.float64, device=device),
        ]
    )
    torch.distributed.all_reduce(buf)
    total, count, ranks, right = (float(v) for v in buf.tolist())
    replicas = max(ranks / dp_size, 1.0)
    if count <= 0:
        return MlmTotals(float("nan"), 0, float("nan"))
    return MlmTotals(total / count, int(round(count / replicas)), right / count)
