"""SFT loss (in-process, one gloo process, fp32, real megatron GPTModel).

Tolerance: packed vs unpacked per-token losses within 1e-5 absolute (the same arithmetic
over differently shaped attention matrices).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.config import ModelConfig, ParallelConfig
from pretrain.data_checks import read_manifest
from pretrain.model import build_model
from pretrain.sft.attention import dense_attention_mask
from pretrain.sft.dataset import SftDataset, open_shards, select_examples
from pretrain.sft.loss import sft_forward_step
from tests.sft._inproc import process_group

PACKED_ABS = 1e-5
SEQ = 128


@pytest.fixture(scope="module")
def group():
    with process_group():
        yield


def _model(position_embedding_type: str) -> torch.nn.Module:
    cfg = ModelConfig(
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        ffn_hidden_size=256,
        position_embedding_type=position_embedding_type,
    )
    (model,) = build_model(cfg, ParallelConfig(), vocab_size=512, seq_length=SEQ)
    return model.eval()


def _dataset(data_dir: Path, pack: bool = True) -> SftDataset:
    examples = select_examples(open_shards([read_manifest(data_dir)]), None, 0)
    return SftDataset(examples, SEQ, 5, 16, pack, pad_id=3)


def _batch(ds: SftDataset, indices: list[int]) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in indices]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _token_loss(model, batch) -> float:
    output, loss_func = sft_forward_step(iter([batch]), model, kind="dense")
    loss_sum, count, _ = loss_func(output)
    return float(loss_sum) / int(count)


def test_loss_counts_only_completion_targets(group, instruct_data):
    model = _model("learned_absolute")
    batch = _batch(_dataset(instruct_data), [0, 1])
    with torch.no_grad():
        base = _token_loss(model, batch)
        prompt = batch["loss_mask"] == 0
        assert prompt.sum() > 10 and (~prompt).sum() > 10
        changed = dict(
            batch, labels=torch.where(prompt, (batch["labels"] + 7) % 512, batch["labels"])
        )
        assert _token_loss(model, changed) == base  # exactly: prompt targets have weight 0
        target = int(torch.nonzero(~prompt.view(-1))[0])
        labels = batch["labels"].clone().view(-1)
        labels[target] = (labels[target] + 7) % 512
        moved = _token_loss(model, dict(batch, labels=labels.view_as(batch["labels"])))
        assert abs(moved - base) > 1e-4, (moved, base)


@pytest.mark.parametrize("position_embedding_type", ["learned_absolute", "rope"])
def test_packed_equals_unpacked_per_example_losses(group, instruct_data, position_embedding_type):
    model = _model(position_embedding_type)
    ds = _dataset(instruct_data)
    checked, multi = 0, 0
    with torch.no_grad():
        for index in range(min(len(ds), 12)):
            if len(ds.index.examples(index)) < 2 and multi >= 2:
                continue
            batch = _batch(ds, [index])
            mask = dense_attention_mask(batch["segment_ids"])
            packed = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"])
            plain = model(  # no block mask (and positions not restarted): examples leak
                batch["tokens"], torch.arange(SEQ)[None], None, labels=batch["labels"]
            )
            start, leaked = 0, 0.0
            for example in ds.index.examples(index).tolist():
                tokens, _ = ds.examples.read(
                    int(ds.examples.shard[example]), int(ds.examples.doc[example]), SEQ
                )
                n = len(tokens) - 1
                alone = model(
                    torch.from_numpy(tokens[:-1])[None],
                    torch.arange(n)[None],
                    None,
                    labels=torch.from_numpy(tokens[1:])[None],
                )
                diff = (packed[0, start : start + n] - alone[0]).abs().max()
                assert diff <= PACKED_ABS, (index, example, float(diff))
                leaked = max(leaked, float((plain[0, start : start + n] - alone[0]).abs().max()))
                start += n
                checked += 1
            if len(ds.index.examples(index)) > 1:
                multi += 1
                assert leaked > 1e-3  # the test can tell a missing mask apart
    assert multi >= 2 and checked > 4  # sequences holding several examples were checked
