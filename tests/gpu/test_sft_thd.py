"""SFT on GPU with Transformer Engine: megatron's packed-sequence (THD) path.

Skipped without CUDA or Transformer Engine (written and CPU-checked up to the GPU call: the
cu_seqlens builder is tested in tests/sft/test_attention.py). The dense block-diagonal mask
equals per-example runs on CPU (tests/sft/test_loss.py); here the THD run of a packed
micro-batch must give the same per-example losses as each example run alone (bshd, causal)
with the same TE model, and a short `objective=sft` run on one GPU (which takes the THD path)
must train. bf16 (TE's fused attention needs 16-bit inputs): per-example mean loss within
2e-2 absolute (bf16 rounding over 2 layers; a leak between examples moves it by ~1e-1 on
this model, as on CPU).
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BF16_ABS = 2e-2
SEQ = 64


@pytest.fixture(scope="module")
def instruct_data(prepared_data, tmp_path_factory):
    """The SFT tests' instruction dir (tests/sft/conftest.py builds the same one)."""
    from tests.sft._data import build_instruct_dir

    return build_instruct_dir(tmp_path_factory.mktemp("sft_gpu") / "instruct", prepared_data)


def _te_model():
    from pretrain.config import ModelConfig, ParallelConfig
    from pretrain.model import build_model, have_transformer_engine

    if not have_transformer_engine():
        pytest.skip("needs Transformer Engine")
    cfg = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256)
    (model,) = build_model(cfg, ParallelConfig(), vocab_size=512, seq_length=SEQ, precision="bf16")
    return model.eval()


def test_thd_equals_per_example_losses(instruct_data):
    from pretrain.data_checks import read_manifest
    from pretrain.sft.attention import model_inputs
    from pretrain.sft.dataset import SftDataset, open_shards, select_examples
    from tests.sft._inproc import process_group

    with process_group():
        model = _te_model()
        examples = select_examples(open_shards([read_manifest(instruct_data)]), None, 0)
        ds = SftDataset(examples, SEQ, 5, 8, True, pad_id=3)
        items = [ds[i] for i in range(2)]
        batch = {k: torch.stack([it[k] for it in items]).cuda() for k in items[0]}
        with torch.no_grad():
            inputs = model_inputs(batch, "thd")
            packed = (
                model(
                    inputs.pop("input_ids"),
                    inputs.pop("position_ids"),
                    inputs.pop("attention_mask"),
                    **inputs,
                )
                .view(2, SEQ)
                .float()
            )
            checked = 0
            for row in range(2):
                start = 0
                for example in ds.index.examples(row).tolist():
                    tokens, _ = examples.read(
                        int(examples.shard[example]), int(examples.doc[example]), SEQ
                    )
                    n = len(tokens) - 1
                    ids = torch.from_numpy(tokens).cuda()
                    alone = model(
                        ids[None, :-1],
                        torch.arange(n, device="cuda")[None],
                        None,
                        labels=ids[None, 1:],
                    ).float()
                    got = packed[row, start : start + n].mean()
                    assert abs(float(got - alone.mean())) <= BF16_ABS, (row, example)
                    start += n
                    checked += 1
        assert checked > 2


def test_sft_trains_on_one_gpu_through_thd(instruct_data, tmp_path):
    from tests._dist import run_pretrain

    run = run_pretrain(
        1,
        [
            "objective=sft",
            f"data.paths=[{instruct_data}]",
            "data.split='90,5,5'",
            "precision=bf16",
            "train.max_steps=10",
            "train.micro_batch_size=2",
            "train.global_batch_size=8",
            "train.seq_length=64",
            "model.num_layers=2",
            "model.hidden_size=64",
            "model.ffn_hidden_size=256",
            "optim.warmup_steps=1",
        ],
        tmp_path / "run",
    )
    losses = run.losses()
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.3, losses
    assert "attention thd" in run.output
    assert all(0 < r["packing_efficiency"] <= 1 for r in run.records if "loss" in r)
