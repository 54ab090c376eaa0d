"""Text sample from the trained model; works with any TP/PP layout.

Each new token runs one full forward through the pipeline (megatron's forward-only schedule,
one micro-batch of one sequence padded on the right to train.seq_length: causal attention makes
the padding invisible to earlier positions). The last stage gathers the vocab-parallel logits
over TP, picks the token (greedy or temperature sampling) and the global last rank broadcasts it
to every rank. Slow (no KV cache) but exact and simple; meant for a short end-of-run sample.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from pretrain.config import SampleConfig

if TYPE_CHECKING:
    from pretrain.context import TrainContext


def _logits_loss(position: int, output_tensor: torch.Tensor):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    logits = gather_from_tensor_model_parallel_region(output_tensor[:, position].float())
    return output_tensor.sum() * 0.0, {"logits": logits.detach()}


def _forward(position: int, data_iterator: Any, model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None)
    return output, partial(_logits_loss, position)


def _pick(logits: torch.Tensor, vocab_size: int, cfg: SampleConfig, gen: torch.Generator) -> int:
    logits = logits[:vocab_size].float().cpu()
    if cfg.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < cfg.top_k < vocab_size:
        floor = torch.topk(logits, cfg.top_k).values[-1]
        logits = logits.masked_fill(logits < floor, float("-inf"))
    probs = torch.softmax(logits / cfg.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def generate(ctx: TrainContext, sample_cfg: SampleConfig) -> str:
    """Generate sample_cfg.max_new_tokens after the prompt; returns the decoded text (all ranks)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    seq = ctx.cfg.train.seq_length
    ids = [ctx.tokenizer.bos] if ctx.tokenizer.bos >= 0 else []
    ids += ctx.tokenizer.tokenize(sample_cfg.prompt)
    ids = ids[-(seq - 1) :] if len(ids) >= seq else ids
    start = len(ids)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    last = ctx.dist.last_rank
    # the interleaved (virtual pipeline) schedule needs >= PP micro-batches: repeat the prompt
    micro = ctx.dist.pp_size if ctx.dist.vpp_size else 1
    for chunk in ctx.model:
        chunk.eval()
    with torch.no_grad():
        while len(ids) < min(seq, start + sample_cfg.max_new_tokens):
            tokens = torch.zeros(1, seq, dtype=torch.long)
            tokens[0, : len(ids)] = torch.tensor(ids)
            batch = {"tokens": tokens, "position_ids": torch.arange(seq).unsqueeze(0)}
            batch = {k: v.to(ctx.device) for k, v in batch.items()}
            out = get_forward_backward_func()(
                forward_step_func=partial(_forward, len(ids) - 1),
                data_iterator=[iter([batch] * micro) for _ in ctx.model],
                model=ctx.model,
                num_microbatches=micro,
                seq_length=seq,
                micro_batch_size=1,
                forward_only=True,
            )
            token = torch.zeros(1, dtype=torch.long, device=ctx.device)
            if out:
                logits = out[0]["logits"][0]
                token[0] = _pick(logits, ctx.tokenizer.vocab_size, sample_cfg, gen)
            torch.distributed.broadcast(token, src=last)
            ids.append(int(token[0]))
            if ids[-1] == ctx.tokenizer.eod:
                break
    for chunk in ctx.model:
        chunk.train()
    return sample_cfg.prompt + ctx.tokenizer.detokenize(ids[start:])
