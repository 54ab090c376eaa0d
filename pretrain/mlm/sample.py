"""End-of-run sample of objective=mlm: fill every mask of `sample.prompt` with the top prediction.

The prompt is split at each `objective.mask_token` (the piece is a control symbol, so
SentencePiece never produces it from text) and the parts are encoded as the data's documents
are; a prompt without the mask piece gets its last token masked. The sample is laid out as in
training, <s> + ids + </s>, padded with <pad> (attention mask 0) to train.seq_length, and runs
one forward through megatron's forward-only schedule (any TP/PP/VPP layout). The last stage
gathers the vocab-parallel logits of the masked positions over TP, picks the top id among the
real, non-special vocabulary (`pretrain.mlm.dataset.special_ids`), and the global last rank
broadcasts the picks. Collective: every rank calls `fill_masks`.

The text is the prompt with each mask replaced by its prediction, and a line listing the
predicted pieces.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from pretrain.config import SampleConfig

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger(__name__)


def _encode_inside(processor: Any, text: str) -> list[int]:
    """Ids of `text` that follows a mask inside the prompt: without the word-start marker that
    SentencePiece's dummy prefix puts before the first piece (unless `text` starts with a
    space), when the piece without it exists."""
    ids = [int(t) for t in processor.encode(text)]
    if not ids or text[0].isspace():
        return ids
    first = processor.id_to_piece(ids[0])
    if first == "\u2581":
        return ids[1:]
    if first.startswith("\u2581"):
        bare = processor.piece_to_id(first[1:])
        if not processor.is_unknown(bare):
            return [bare, *ids[1:]]
    return ids


def prompt_ids(processor: Any, prompt: str, mask_token: str, mask_id: int) -> list[int]:
    """The prompt's ids with `mask_id` at each `mask_token`; without one, the last id masked."""
    ids: list[int] = []
    for i, part in enumerate(prompt.split(mask_token)):
        if i > 0:
            ids.append(mask_id)
        if part:
            ids.extend(_encode_inside(processor, part) if i > 0 else processor.encode(part))
    if mask_id not in ids and ids:
        ids[-1] = mask_id
    return ids


def layout(ids: list[int], roles: dict[str, int], seq_length: int) -> dict[str, torch.Tensor]:
    """One micro-batch: <s> + the last seq_length - 2 ids + </s>, padded to seq_length."""
    body = [roles["cls"], *ids[-(seq_length - 2) :], roles["sep"]]
    tokens = torch.full((1, seq_length), roles["pad"], dtype=torch.long)
    tokens[0, : len(body)] = torch.tensor(body)
    attention = torch.zeros(1, seq_length, dtype=torch.long)
    attention[0, : len(body)] = 1
    return {"tokens": tokens, "attention_mask": attention}


def _logits_loss(positions: torch.Tensor, output_tensor: Any):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = output_tensor[0] if isinstance(output_tensor, tuple) else output_tensor
    picked = gather_from_tensor_model_parallel_region(logits[0, positions].float())
    return logits.sum() * 0.0, {"logits": picked.detach()}


def _forward(positions: torch.Tensor, data_iterator: Any, model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["attention_mask"])
    return output, partial(_logits_loss, positions)


def predict(ctx: TrainContext, batch: dict[str, torch.Tensor], special: torch.Tensor) -> list[int]:
    """Top non-special id at every mask position of `batch`, on every rank. Collective."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pretrain.special_tokens import mlm_ids

    dist = ctx.dist
    mask_id = mlm_ids(ctx.cfg, ctx.data_manifests[0])["mask"]
    positions = (batch["tokens"][0] == mask_id).nonzero().flatten().to(dist.device)
    batch = {k: v.to(dist.device) for k, v in batch.items()}
    micro = dist.pp_size if dist.vpp_size else 1  # interleaved PP needs >= PP micro-batches
    modes = [chunk.training for chunk in ctx.model]
    for chunk in ctx.model:
        chunk.eval()
    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=partial(_forward, positions),
            data_iterator=[iter([batch] * micro) for _ in ctx.model],
            model=ctx.model,
            num_microbatches=micro,
            seq_length=ctx.cfg.train.seq_length,
            micro_batch_size=1,
            forward_only=True,
        )
    for chunk, mode in zip(ctx.model, modes, strict=True):
        chunk.train(mode)
    picks = torch.zeros(positions.numel(), dtype=torch.long, device=dist.device)
    if out:
        logits = out[0]["logits"][:, : special.numel()].cpu()
        picks[:] = logits.masked_fill(special, float("-inf")).argmax(dim=-1).to(dist.device)
    torch.distributed.broadcast(picks, src=dist.last_rank)
    return [int(p) for p in picks.tolist()]


def fill_masks(ctx: TrainContext, sample_cfg: SampleConfig) -> str:
    """`sample_cfg.prompt` with every mask filled by the model's top prediction (all ranks)."""
    from pretrain.mlm.dataset import special_ids
    from pretrain.special_tokens import mlm_ids

    processor = ctx.tokenizer.processor
    roles = mlm_ids(ctx.cfg, ctx.data_manifests[0])
    ids = prompt_ids(processor, sample_cfg.prompt, ctx.cfg.objective.mask_token, roles["mask"])
    ids = ids[-(ctx.cfg.train.seq_length - 2) :]
    if roles["mask"] not in ids:
        log.warning("sample: the prompt has no token to fill; nothing predicted")
        return sample_cfg.prompt
    special = torch.zeros(ctx.tokenizer.vocab_size, dtype=torch.bool)
    special[special_ids(processor, roles)] = True
    picks = iter(predict(ctx, layout(ids, roles, ctx.cfg.train.seq_length), special))
    filled = [next(picks) if i == roles["mask"] else i for i in ids]
    predicted = [i for i, old in zip(filled, ids, strict=True) if old == roles["mask"]]
    log.info("sample token ids: prompt %s, predictions %s", ids, predicted)
    pieces = ", ".join(repr(processor.id_to_piece(i)) for i in predicted)
    return f"{processor.decode(filled)}\n[predicted: {pieces}]"
