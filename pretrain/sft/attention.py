"""Per-example attention for packed SFT sequences: a dense mask (CPU, local spec) or THD (TE).

Dense path (megatron's local layer spec, any device): `dense_attention_mask` builds a bool
[b, 1, s, s] mask (True = masked) that is causal *and* block-diagonal over the segments, and it
is passed to GPTModel as `attention_mask`. megatron-core 0.16.1's `DotProductAttention` hands it
to `FusedScaleMaskSoftmax`, whose torch path builds its own causal mask only when the given mask
is None (`attn_mask_type == causal and mask is None`); a given mask replaces it, so ours must
contain the causal part, which it does. No example attends to another; padding forms its own
segment (its rows are never empty: the diagonal is always visible, so no NaN).

Positions: learned absolute position embeddings read `position_ids`, which restart at 0 for
every example. RoPE is relative (the score of q_i, k_j depends on i - j only), so with the
block-diagonal mask no restart is needed; GPTModel's rotary embedding uses in-sequence offsets.

THD path (Transformer Engine on GPU): megatron's packed-sequence path, `PackedSeqParams` with
qkv_format="thd" and cu_seqlens from the segments. The micro-batch [b, s] is flattened into one
row [1, b x s] of b x s tokens whose sequences are the segments of every row (a padding run is
a sequence of its own); TE's fused attention and megatron's thd RoPE restart at each boundary.
"""

from __future__ import annotations

from typing import Any

import torch

ATTENTION_KINDS = ("dense", "thd", "causal")
"""dense: block-diagonal mask; thd: TE packed sequences; causal: plain causal (pack=false)."""


def attention_kind(pack: bool, transformer_engine: bool) -> str:
    """pack=false: one example per sequence, followed only by padding, so the plain causal
    mask already keeps it apart (padding labels have loss mask 0); pack=true: thd with
    Transformer Engine's layers, else the dense block-diagonal mask."""
    if not pack:
        return "causal"
    return "thd" if transformer_engine else "dense"


def dense_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """bool [b, 1, s, s], True where query i must not attend to key j (other segment or j > i)."""
    seq = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    return ~(same & causal)[:, None]


def cu_seqlens(segment_ids: torch.Tensor) -> torch.Tensor:
    """int32 cumulative sequence lengths of the flattened [b x s] segments (starts + end).

    A sequence starts at every row start and wherever the segment id changes, so two rows whose
    boundary segments share an id stay separate.
    """
    batch, seq = segment_ids.shape
    flat = segment_ids.reshape(-1)
    change = torch.ones_like(flat, dtype=torch.bool)
    change[1:] = flat[1:] != flat[:-1]
    change[::seq] = True
    starts = torch.nonzero(change, as_tuple=False).view(-1)
    end = torch.tensor([batch * seq], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def build_packed_seq_params(segment_ids: torch.Tensor) -> Any:
    """megatron `PackedSeqParams` (qkv_format="thd") for the flattened micro-batch."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens(segment_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def model_inputs(batch: dict[str, torch.Tensor], kind: str) -> dict[str, Any]:
    """GPTModel arguments for one SFT micro-batch (`kind` in ATTENTION_KINDS).

    thd flattens tokens/labels/position_ids to [1, b x s]; the loss mask is flattened by the
    loss function either way, so its order matches.
    """
    tokens, positions, labels = batch["tokens"], batch["position_ids"], batch["labels"]
    if kind == "thd":
        return {
            "input_ids": tokens.reshape(1, -1),
            "position_ids": positions.reshape(1, -1),
            "attention_mask": None,
            "labels": labels.reshape(1, -1),
            "packed_seq_params": build_packed_seq_params(batch["segment_ids"]),
        }
    mask = dense_attention_mask(batch["segment_ids"]) if kind == "dense" else None
    return {
        "input_ids": tokens,
        "position_ids": positions,
        "attention_mask": mask,
        "labels": labels,
    }
