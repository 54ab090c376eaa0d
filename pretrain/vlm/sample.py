"""Captions by a LLaVA model: the end-of-run sample of objective=llava and `pretrain.caption`.

A caption is generated greedily after the prompt `[<image>]`, laid out as in training (the
`<image>` token first, the text right-padded with <pad> to train.seq_length; causal attention
makes the padding invisible). Each new token runs one full forward through the pipeline
(megatron's forward-only schedule, one micro-batch of one sample; no KV cache: slow but exact,
for short captions): LLaVAModel replaces the `<image>` token by the image's embeddings, so the
logits of text position p sit at combined position p - 1 + img_seq_len. The last stage gathers
the vocab-parallel logits over TP, picks the token (`pretrain.sample.TokenPicker`, greedy) and
the global last rank broadcasts it to every rank, as `pretrain.sample` does for text.

`caption_sample` captions the first `CAPTION_SAMPLES` images of the validation split (the
train split's when there is none), as the model saw them in training (zeros with
vision.blank_images), and writes one line per image with its key and reference caption.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from pretrain.config import SampleConfig
from pretrain.sample import TokenPicker, continuation, forward_pick

if TYPE_CHECKING:
    from pretrain.context import TrainContext
    from pretrain.parallel import DistInfo

log = logging.getLogger(__name__)

CAPTION_SAMPLES = 3
"""Images the end-of-run sample captions."""

_TAR_HEADER = 512
"""Bytes of a tar member header (the member's name is in its first 100 bytes)."""


def image_seq_len(model: list[torch.nn.Module]) -> int:
    """Embeddings LLaVAModel puts in place of one `<image>` token (patches, +class token)."""
    from pretrain.checkpoint.state import unwrap

    return int(unwrap(model[0]).img_seq_len)


def _logits_loss(position: int, output: Any, loss_mask: Any = None):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = gather_from_tensor_model_parallel_region(output[:, position].float())
    return output.sum() * 0.0, {"logits": logits.detach()}


def _forward(position: int, image_token_id: int, data_iterator: Any, model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(
        batch["images"],
        batch["tokens"],
        batch["position_ids"],
        None,
        image_token_index=image_token_id,
    )
    if isinstance(output, tuple):  # (logits or hidden states, the combined loss mask)
        output = output[0]
    return output, partial(_logits_loss, position)


def _next_token(
    model: list[torch.nn.Module],
    image: torch.Tensor,
    ids: list[int],
    seq_length: int,
    dist: DistInfo,
    pick: TokenPicker,
) -> int:
    """One forward of the image + `ids` (`ids[0]` the image token) through all stages; the
    picked token, on every rank."""
    from pretrain.checkpoint.state import unwrap

    tokens = torch.zeros(1, seq_length, dtype=torch.long)
    tokens[0, : len(ids)] = torch.tensor(ids)

    dtype = next(unwrap(model[0]).parameters()).dtype  # bf16/fp16 weights read such images
    batch = {
        "images": image.unsqueeze(0).to(dtype),
        "tokens": tokens,
        "position_ids": torch.arange(seq_length).unsqueeze(0),
    }
    combined = seq_length - 1 + image_seq_len(model)
    forward = partial(_forward, len(ids) - 2 + image_seq_len(model), ids[0])
    return forward_pick(model, batch, forward, combined, dist, pick)


def caption_ids(
    model: list[torch.nn.Module],
    image: torch.Tensor,
    *,
    image_token_id: int,
    dist: DistInfo,
    seq_length: int,
    vocab_size: int,
    eod: int,
    max_new_tokens: int,
) -> list[int]:
    """Greedy caption ids of `image` ([3, S, S], normalised), EOD excluded. Collective.

    At most max_new_tokens and seq_length - 2 tokens (the training layout's caption room).
    """
    pick = TokenPicker(SampleConfig(temperature=0.0), vocab_size, seed=0)
    ids = [image_token_id]
    new: list[int] = []
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        while len(new) < max_new_tokens and len(ids) + len(new) < seq_length:
            token = _next_token(model, image, ids + new, seq_length, dist, pick)
            if token == eod:
                break
            new.append(token)
    for chunk, mode in zip(model, modes, strict=True):
        chunk.train(mode)
    return new


def decode_caption(processor: Any, ids: list[int]) -> str:
    """The caption text of `ids` (decoded as the start of a document)."""
    return continuation(processor.decode, [], ids).strip()


def _key(shards: Any, row: int) -> str:
    """Sample `row`'s key: its PNG member's name (from the tar header before the data) minus
    `.png`."""
    tar, offset = int(shards.rows[row][0]), int(shards.rows[row][1])
    with open(shards.tars[tar], "rb") as handle:
        handle.seek(offset - _TAR_HEADER)
        name = handle.read(100).split(b"\0", 1)[0].decode("utf-8", "replace")
    return name.rsplit(".", 1)[0]


def samples_to_caption(ctx: TrainContext, count: int) -> list[tuple[str, torch.Tensor, Any]]:
    """(key, image as the model saw it in training, reference caption ids) of the first
    `count` samples of the validation split (else of the train split)."""
    dataset = ctx.valid_dataset if ctx.valid_dataset is not None else ctx.train_dataset
    found = []
    for row in (int(r) for r in dataset.members[:count]):
        image = dataset.shards.image(row)
        if dataset.layout.blank_images:
            image = torch.zeros_like(image)
        found.append((_key(dataset.shards, row), image, dataset.shards.caption_ids(row)))
    return found


def caption_sample(ctx: TrainContext, sample_cfg: SampleConfig) -> str | None:
    """`image <key>: <caption>  (reference: <caption>)` for a few validation images (all
    ranks; None when sample.max_new_tokens is 0)."""
    if sample_cfg.max_new_tokens <= 0:
        return None
    processor = ctx.tokenizer.processor
    lines = []
    for key, image, reference in samples_to_caption(ctx, CAPTION_SAMPLES):
        new = caption_ids(
            ctx.model,
            image,
            image_token_id=ctx.train_dataset.layout.image_token,
            dist=ctx.dist,
            seq_length=ctx.cfg.train.seq_length,
            vocab_size=ctx.tokenizer.vocab_size,
            eod=ctx.tokenizer.eod,
            max_new_tokens=sample_cfg.max_new_tokens,
        )
        log.info("caption token ids of image %s: %s", key, new)
        caption = decode_caption(processor, new)
        expected = decode_caption(processor, [int(i) for i in reference])
        lines.append(f"image {key}: {caption}  (reference: {expected})")
    return "\n".join(lines)
