"""objective=llava forward step: megatron's per-token loss over the caption tokens.

LLaVAModel (built with calculate_per_token_loss, pretrain/vlm/model.py) is called with the
text labels; its last stage returns the per-token losses over the combined sequence
([b, seq_length - 1 + n], n = image embeddings), where the label of text position m sits at
combined position n - 1 + m (megatron's `_preprocess_data` shift). Megatron's own combined
loss mask zeroes every image position, so the first caption token (the label of the <image>
position, predicted from the last image embedding) would never be trained and a caption could
not start; `combined_loss_mask` maps the text loss mask 1:1 instead (it equals megatron's mask
everywhere else). The loss function is sft's (`token_loss_func`: sum, count), so the loss of a
step is the mean over the caption tokens (+ eod) of the whole global batch for every layout.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from pretrain.sft.loss import token_loss_func


def combined_loss_mask(loss_mask: torch.Tensor, image_seq_len: int) -> torch.Tensor:
    """The text loss mask [b, s] on the combined sequence [b, s - 1 + image_seq_len]."""
    b, s = loss_mask.shape
    mask = torch.zeros(b, s - 1 + image_seq_len, dtype=loss_mask.dtype, device=loss_mask.device)
    mask[:, image_seq_len - 1 :] = loss_mask
    return mask


def llava_forward_step(
    data_iterator: Any, model: torch.nn.Module, image_seq_len: int, nan: bool = False
):
    """megatron forward_step_func for objective=llava micro-batches (LLAVA_BATCH_KEYS)."""
    batch = next(data_iterator)
    output, _ = model(
        batch["images"],
        batch["tokens"],
        batch["position_ids"],
        None,
        labels=batch["labels"],
        loss_mask=batch["loss_mask"],
    )
    mask = combined_loss_mask(batch["loss_mask"], image_seq_len)
    return output, partial(token_loss_func, mask, nan)
