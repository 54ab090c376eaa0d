"""Block-diagonal mask and the THD cu_seqlens builder (CPU; the THD run itself: tests/gpu)."""

from __future__ import annotations

import torch

from pretrain.sft.attention import attention_kind, cu_seqlens, dense_attention_mask, model_inputs


def test_dense_mask_is_causal_and_block_diagonal():
    segments = torch.tensor([[0, 0, 1, 1, 1, 2]])
    allowed = ~dense_attention_mask(segments)[0, 0]
    assert dense_attention_mask(segments).shape == (1, 1, 6, 6)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed, expected)


def test_cu_seqlens_of_flattened_rows():
    # row 0: examples of 3 and 2 positions, then 1 padding position (segment 2);
    # row 1: one example of 4 then padding of 2; row boundaries always start a sequence,
    # even when both sides carry the same segment id (row 0 ends and row 1 starts with 0 ...)
    segments = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]])
    assert cu_seqlens(segments).tolist() == [0, 3, 5, 6, 10, 12]
    assert cu_seqlens(segments).dtype == torch.int32
    same_id_across_rows = torch.tensor([[0, 0, 0], [0, 0, 0]])
    assert cu_seqlens(same_id_across_rows).tolist() == [0, 3, 6]


def test_model_inputs_per_kind():
    batch = {
        "tokens": torch.arange(12).view(2, 6),
        "labels": torch.arange(1, 13).view(2, 6),
        "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]),
        "segment_ids": torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]),
        "loss_mask": torch.ones(2, 6),
    }
    thd = model_inputs(batch, "thd")
    assert thd["input_ids"].shape == (1, 12) and thd["attention_mask"] is None
    params = thd["packed_seq_params"]
    assert params.qkv_format == "thd" and params.max_seqlen_q == 4
    assert params.cu_seqlens_q.tolist() == [0, 3, 5, 6, 10, 12]
    assert thd["position_ids"].view(-1).tolist() == batch["position_ids"].view(-1).tolist()
    assert model_inputs(batch, "dense")["attention_mask"].shape == (2, 1, 6, 6)
    assert model_inputs(batch, "causal")["attention_mask"] is None
    assert [attention_kind(True, True), attention_kind(True, False)] == ["thd", "dense"]
    assert attention_kind(False, True) == "causal"
