"""Text from the trained model; works with any TP/PP layout (end of training, `pretrain.generate`).

The prompt is encoded exactly as data_pipeline encodes a document's text (SentencePiece, no BOS:
documents are tokens + EOD and never contain BOS). Each new token runs one full forward through
the pipeline (megatron's forward-only schedule, one micro-batch of one sequence padded on the
right: causal attention makes the padding invisible to earlier positions). The last stage
gathers the vocab-parallel logits over TP, `TokenPicker` picks the token (greedy or temperature
+ top-k) and the global last rank broadcasts it to every rank. Slow (no KV cache) but exact
and simple; meant for short samples. The text is the prompt + the new tokens decoded in context
(`continuation`), so no space is lost or added where they meet. A FIM-trained model with
sample.suffix set infills instead (`infill`, prompt format in `pretrain.fim.infill`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from pretrain.config import SampleConfig
from pretrain.fim.infill import Infill, middle_text, prompt_ids, report

if TYPE_CHECKING:
    from pretrain.context import TrainContext
    from pretrain.parallel import DistInfo

log = logging.getLogger(__name__)

PAD_MULTIPLE = 64
"""The sequence is padded to a multiple of this (x TP), at most the context length."""


class TokenPicker:
    """The next token from one position's logits: greedy, or temperature + top-k sampling.

    The only sampling code of the project (end-of-run sample and `pretrain.generate`).
    """

    def __init__(self, cfg: SampleConfig, vocab_size: int, seed: int) -> None:
        self.temperature = cfg.temperature
        self.top_k = cfg.top_k
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """Token id among the first vocab_size logits (the rest are TP padding rows)."""
        logits = logits[: self.vocab_size].float().cpu()
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        if 0 < self.top_k < self.vocab_size:
            floor = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < floor, float("-inf"))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def encode_prompt(processor: Any, prompt: str) -> list[int]:
    """Prompt ids as the data has them: SentencePiece `encode` of the raw text, no BOS/EOD."""
    return [int(i) for i in processor.encode(prompt)]


def continuation(
    decode: Callable[[list[int]], str], prompt_ids: Sequence[int], new_ids: Sequence[int]
) -> str:
    """The text `new_ids` add after the prompt: decode(prompt + new) minus decode(prompt).

    Decoding the new ids alone would drop a leading space (SentencePiece strips the dummy
    prefix at the start of a text) and could split a multi-byte character.
    """
    base = decode(list(prompt_ids))
    full = decode(list(prompt_ids) + list(new_ids))
    return full[len(base) :] if full.startswith(base) else decode(list(new_ids))


def _logits_loss(position: int, output_tensor: torch.Tensor):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = gather_from_tensor_model_parallel_region(output_tensor[:, position].float())
    return output_tensor.sum() * 0.0, {"logits": logits.detach()}


def _forward(position: int, data_iterator: Any, model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None)
    return output, partial(_logits_loss, position)


def _padded_length(used: int, context: int, tp_size: int) -> int:
    multiple = PAD_MULTIPLE * tp_size  # sequence parallelism splits the sequence over TP
    return min(context, math.ceil(used / multiple) * multiple)


def _next_token(
    model: list[torch.nn.Module], ids: list[int], context: int, dist: DistInfo, pick: TokenPicker
) -> int:
    """One forward of `ids` through all stages; the picked token, on every rank."""
    length = _padded_length(len(ids), context, dist.tp_size)
    tokens = torch.zeros(1, length, dtype=torch.long)
    tokens[0, : len(ids)] = torch.tensor(ids)
    batch = {"tokens": tokens, "position_ids": torch.arange(length).unsqueeze(0)}
    return forward_pick(model, batch, partial(_forward, len(ids) - 1), length, dist, pick)


def forward_pick(
    model: list[torch.nn.Module],
    batch: dict[str, torch.Tensor],
    forward_step: Callable[..., Any],
    seq_length: int,
    dist: DistInfo,
    pick: TokenPicker,
) -> int:
    """One forward-only pass of the one-sequence `batch` through all pipeline stages with
    `forward_step` (its loss function returns {"logits": ...} of the next position); the token
    `pick` chooses on the last stage, broadcast to every rank."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batch = {k: v.to(dist.device) for k, v in batch.items()}
    # the interleaved (virtual pipeline) schedule needs >= PP micro-batches: repeat the prompt
    micro = dist.pp_size if dist.vpp_size else 1
    out = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[iter([batch] * micro) for _ in model],
        model=model,
        num_microbatches=micro,
        seq_length=seq_length,
        micro_batch_size=1,
        forward_only=True,
    )
    token = torch.zeros(1, dtype=torch.long, device=dist.device)
    if out:
        token[0] = pick(out[0]["logits"][0])
    torch.distributed.broadcast(token, src=dist.last_rank)
    return int(token[0])


def generate_ids(
    model: list[torch.nn.Module],
    prompt_ids: list[int],
    cfg: SampleConfig,
    dist: DistInfo,
    *,
    context: int,
    vocab_size: int,
    eod: int,
    seed: int,
) -> list[int]:
    """Up to cfg.max_new_tokens new ids after `prompt_ids` (stops after EOD), on all ranks.

    `model` are this rank's chunks (DDP-wrapped or not); `context` is the longest sequence fed
    (train.seq_length): the prompt keeps its last context - 1 tokens. Collective.
    """
    ids = list(prompt_ids)[-(context - 1) :]
    pick = TokenPicker(cfg, vocab_size, seed)
    new: list[int] = []
    modes = [chunk.training for chunk in model]
    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        while len(new) < cfg.max_new_tokens and len(ids) + len(new) < context:
            new.append(_next_token(model, ids + new, context, dist, pick))
            if new[-1] == eod:
                break
    for chunk, mode in zip(model, modes, strict=True):
        chunk.train(mode)
    return new


def generate(ctx: TrainContext, sample_cfg: SampleConfig) -> str:
    """The prompt + sample_cfg.max_new_tokens generated after it, decoded (on all ranks).

    With data.fim.rate > 0 and sample.suffix set: the prompt (prefix) + the infilled middle +
    the suffix (`infill`).
    """
    if sample_cfg.suffix is not None and ctx.cfg.data.fim.rate > 0:
        return infill(ctx, sample_cfg).text
    processor = ctx.tokenizer.processor
    ids = encode_prompt(processor, sample_cfg.prompt)
    new = generate_ids(
        ctx.model,
        ids,
        sample_cfg,
        ctx.dist,
        context=ctx.cfg.train.seq_length,
        vocab_size=ctx.tokenizer.vocab_size,
        eod=ctx.tokenizer.eod,
        seed=ctx.cfg.seed,
    )
    log.info("sample token ids: prompt %s + new %s", ids, new)
    return sample_cfg.prompt + continuation(processor.decode, ids, new)


def infill(ctx: TrainContext, sample_cfg: SampleConfig) -> Infill:
    """The middle between sample.prompt and sample.suffix, by a FIM-trained model (all ranks)."""
    from pretrain.special_tokens import fim_ids

    processor = ctx.tokenizer.processor
    context = ctx.cfg.train.seq_length
    suffix = sample_cfg.suffix or ""
    ids, prefix_ids = prompt_ids(
        processor, sample_cfg.prompt, suffix, fim_ids(ctx.cfg, ctx.data_manifests[0]), context - 1
    )
    new = generate_ids(
        ctx.model,
        ids,
        sample_cfg,
        ctx.dist,
        context=context,
        vocab_size=ctx.tokenizer.vocab_size,
        eod=ctx.tokenizer.eod,
        seed=ctx.cfg.seed,
    )
    log.info("infill token ids: prompt %s + new %s", ids, new)
    middle = middle_text(processor.decode, prefix_ids, new, ctx.tokenizer.eod)
    result = Infill(sample_cfg.prompt, middle, suffix)
    report(result, new)
    return result
