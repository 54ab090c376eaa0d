"""One SFT optimizer step in-process (the real `pretrain.train.setup` and `train_step`).

The logged loss is the mean over the target tokens of the whole global batch, and the gradient
is that loss's gradient (megatron's per-token path). Tolerances: loss within 1e-6 relative of
the hand-computed token mean (float64 sums of float32 values), grad norm within 1e-5 relative
of autograd's on detached weights; the mean of micro-batch means differs by ~8e-3 here.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.func import functional_call

from pretrain.data import micro_batches
from pretrain.sft.attention import dense_attention_mask
from tests.sft._inproc import sft_context, sft_overrides


def _per_token(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    mask = dense_attention_mask(batch["segment_ids"])
    args = (batch["tokens"], batch["position_ids"], mask)
    losses = model(args, {"labels": batch["labels"]})
    return losses.float(), batch["loss_mask"]


def test_step_loss_is_the_token_mean_of_the_global_batch(instruct_data, tmp_path):
    from pretrain.step import train_step

    with sft_context(sft_overrides(instruct_data, tmp_path / "run")) as ctx:
        assert ctx.sft_attention == "dense" and ctx.num_microbatches == 4
        keys = ctx.batch_keys
        for _ in range(2):  # a model that is no longer uniform: token losses vary more
            train_step(ctx)
        batches = micro_batches(ctx.train_dataset, 16, 2, 0, 1, keys)  # step 3's samples
        batches = [next(batches) for _ in range(4)]
        module = ctx.model[0].module
        # detached copies of the weights: autograd reaches them, not the DDP grad buffers
        weights = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
        sums, counts = [], []
        for batch in batches:
            losses, mask = _per_token(partial(functional_call, module, weights), batch)
            sums.append((losses * mask).sum())
            counts.append(mask.sum())
        token_mean = torch.stack(sums).sum() / torch.stack(counts).sum()
        grads = torch.autograd.grad(token_mean, list(weights.values()))
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        mean_of_means = float(
            torch.stack([s / c for s, c in zip(sums, counts, strict=True)]).mean()
        )
        assert len({int(c) for c in counts}) > 1  # micro-batches differ in target counts
        assert abs(mean_of_means - float(token_mean)) > 1e-3  # so the two definitions differ

        result = train_step(ctx)
        assert result.loss == pytest.approx(float(token_mean), rel=1e-6)
        assert result.target_tokens == int(sum(counts))
        # the gradient is the token-mean loss's (megatron divides by the global target count)
        assert result.grad_norm == pytest.approx(grad_norm, rel=1e-5)


def test_validation_on_valid_paths_is_the_token_mean_of_its_batches(instruct_data, tmp_path):
    from pretrain.step import evaluate
    from tests.sft._data import build_instruct_dir

    held = build_instruct_dir(tmp_path / "held", instruct_data, counts=(12,), seed=7)
    extra = (f"data.valid_paths=[{held}]", "eval.iters=2")
    with sft_context(sft_overrides(instruct_data, tmp_path / "run", *extra)) as ctx:
        valid = ctx.valid_dataset
        assert len(valid.examples) == 12 and valid.examples.doc.tolist() == list(range(12))
        module = ctx.model[0].module.eval()
        sums, counts = [], []
        with torch.no_grad():
            for batch in [valid[i] for i in range(16)]:  # 2 iters x global batch 8
                one = {k: v[None] for k, v in batch.items()}
                losses, mask = _per_token(lambda a, k: module(*a, **k), one)
                sums.append((losses * mask).sum())
                counts.append(mask.sum())
        module.train()
        expected = float(torch.stack(sums).sum() / torch.stack(counts).sum())
        assert evaluate(ctx) == pytest.approx(expected, rel=1e-6)
        # the iterator of a resumed run (consumed_samples=16) continues the same samples
        fresh = micro_batches(ctx.train_dataset, 0, 2, 0, 1, ctx.batch_keys)
        for _ in range(8):
            next(fresh)
        resumed = micro_batches(ctx.train_dataset, 16, 2, 0, 1, ctx.batch_keys)
        a, b = next(fresh), next(resumed)
        assert all(torch.equal(a[k], b[k]) for k in ctx.batch_keys)
