"""objective=mlm loss (pretrain/mlm/loss.py): only the masked positions count (in-process).

One gloo process (TP=1); the vocab-parallel reductions under TP=2 are covered by the layout
runs of test_distributed.py. Tolerance: the loss equals torch's cross entropy within 1e-5
relative (fp32, same arithmetic in another order).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import ModelConfig, ParallelConfig
from pretrain.mlm.loss import mlm_forward_step, mlm_loss_func, reduce_mlm
from pretrain.mlm.model import build_bert_model
from tests.sft._inproc import process_group

REL = 1e-5
B, S, V = 2, 16, 64


@pytest.fixture(scope="module")
def group():
    with process_group():
        yield


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=gen)
    labels = torch.randint(0, V, (B, S), generator=gen)
    mask = (torch.rand(B, S, generator=gen) < 0.3).float()
    return logits, labels, mask


def test_loss_and_accuracy_are_over_the_masked_positions(group):
    logits, labels, mask = _case()
    loss_sum, count, reported = mlm_loss_func(labels, mask, False, logits.clone())
    keep = mask.bool()
    expected = F.cross_entropy(logits[keep], labels[keep], reduction="sum")
    assert int(count) == int(keep.sum()) > 0
    assert float(loss_sum) == pytest.approx(float(expected), rel=REL)
    right = (logits[keep].argmax(-1) == labels[keep]).sum()
    assert float(reported["correct"]) == float(right)
    # make every prediction right: only the masked ones count
    logits.scatter_(-1, labels.unsqueeze(-1), 100.0)
    _, _, reported = mlm_loss_func(labels, mask, False, logits.clone())
    assert float(reported["correct"]) == float(keep.sum())


def test_unmasked_positions_change_nothing(group):
    logits, labels, mask = _case(1)
    leaf = logits.clone().requires_grad_(True)
    loss_sum, _, reported = mlm_loss_func(labels, mask, False, leaf)
    loss_sum.backward()
    off = ~mask.bool()
    assert leaf.grad is not None and bool((leaf.grad[off] == 0).all())
    assert bool((leaf.grad[mask.bool()].abs().sum(-1) > 0).all())
    other = logits.clone()
    other[off] = torch.randn(int(off.sum()), V) * 10
    other_labels = labels.clone()
    other_labels[off] = (labels[off] + 1) % V
    again, _, again_reported = mlm_loss_func(other_labels, mask, False, other)
    assert float(again) == float(loss_sum)
    assert float(again_reported["correct"]) == float(reported["correct"])
    zero_sum, zero_count, _ = mlm_loss_func(labels, torch.zeros_like(mask), False, logits.clone())
    assert float(zero_sum) == 0.0 and int(zero_count) == 0


def test_forward_step_on_bert(group):
    """The real BertModel: the step's loss is the masked tokens' cross entropy of its logits."""
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256)
    (model,) = build_bert_model(cfg, ParallelConfig(), vocab_size=V)
    model.eval()
    _, labels, mask = _case(2)
    tokens = labels.clone()
    tokens[mask.bool()] = 8  # the mask id
    batch = {"tokens": tokens, "labels": labels, "loss_mask": mask}
    batch["attention_mask"] = torch.ones(B, S, dtype=torch.long)
    with torch.no_grad():
        output, loss_func = mlm_forward_step(iter([batch]), model)
        loss_sum, count, reported = loss_func(output)
        logits = model(tokens, batch["attention_mask"])[0]
    keep = mask.bool()
    expected = F.cross_entropy(logits[keep], labels[keep], reduction="sum")  # padded vocab
    assert float(loss_sum) == pytest.approx(float(expected), rel=REL)
    totals = reduce_mlm([reported], torch.device("cpu"), dp_size=1)
    assert totals.masked_tokens == int(count) == int(keep.sum())
    assert totals.loss == pytest.approx(float(expected) / int(count), rel=REL)
    assert totals.accuracy == float(reported["correct"]) / int(count)
