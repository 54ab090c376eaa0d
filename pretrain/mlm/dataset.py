"""objective=mlm samples: <s> + a window of the packed documents + </s>, dynamically masked.

The windows come from the same indexed shards and the same megatron GPTDataset machinery as
objective=lm (`pretrain.data.build_datasets`: blend, split, shuffle, index cache), asked for
windows of seq_length - 2 tokens; megatron adds one extra token to every window (the first
token of the next one, GPT's shifted label), which is dropped here, so the windows tile the
packed token stream without overlap. Documents inside a window are separated by their EOD
(</s>, the SEP piece), like RoBERTa's FULL-SENTENCES packing.

A sample is [CLS=<s>] + window + [SEP=</s>]; `pretrain.mlm.masking` masks it from (seed,
split, global sample index). Batch keys (MLM_BATCH_KEYS): tokens (the masked input), labels
(the original sample), loss_mask (1.0 at the selected positions) and attention_mask (1 for
real tokens, 0 for the <pad> megatron appends when the data runs out inside a window).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from pretrain.config import ObjectiveConfig, PretrainConfig
from pretrain.data import SentencePieceTokenizer, build_datasets
from pretrain.mlm.masking import MaskingSpec, mask_sample, sample_generator, special_table

log = logging.getLogger("pretrain")

MLM_BATCH_KEYS = ("tokens", "labels", "loss_mask", "attention_mask")
"""The tensors of one objective=mlm micro-batch ([micro_batch, seq_length] each)."""


def special_ids(processor: Any, roles: dict[str, int]) -> list[int]:
    """Ids never selected nor drawn: the roles' ids (cls, sep, pad, mask), every control piece
    of the SentencePiece model (FIM sentinels and the like) and <unk>."""
    size = processor.get_piece_size()
    controls = [i for i in range(size) if processor.is_control(i) or processor.is_unknown(i)]
    return sorted({*roles.values(), *controls})


def masking_spec(
    objective: ObjectiveConfig, tokenizer: SentencePieceTokenizer, roles: dict[str, int]
) -> MaskingSpec:
    """The run's MaskingSpec from objective.* and the tokenizer."""
    table = special_table(tokenizer.vocab_size, special_ids(tokenizer.processor, roles))
    return MaskingSpec(
        mask_rate=objective.mask_rate,
        mask_token_rate=objective.mask_token_rate,
        random_token_rate=objective.random_token_rate,
        mask_id=roles["mask"],
        special=table,
    )


def window_tokens(windows: Any, index: int) -> np.ndarray:
    """The raw tokens of window `index` (GPTDataset or BlendedDataset of GPTDatasets), without
    the extra next-window token megatron appends."""
    from megatron.core.datasets.blended_dataset import BlendedDataset

    if isinstance(windows, BlendedDataset):
        dataset = windows.datasets[int(windows.dataset_index[index])]
        index = int(windows.dataset_sample_index[index])
    else:
        dataset = windows
    text, _ = dataset._query_document_sample_shuffle_indices(int(index))
    return np.asarray(text[:-1], dtype=np.int64)


class MlmDataset:
    """Masked samples over megatron windows; `dataset[i]` is a dict of MLM_BATCH_KEYS tensors."""

    def __init__(
        self, windows: Any, spec: MaskingSpec, roles: dict[str, int], seed: int, split: int
    ) -> None:
        self.windows = windows
        self.spec = spec
        self.cls, self.sep, self.pad = roles["cls"], roles["sep"], roles["pad"]
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, index: int) -> np.ndarray:
        """The unmasked sample: <s> + window + </s>."""
        window = window_tokens(self.windows, index)
        return np.concatenate([[self.cls], window, [self.sep]]).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens = self.sample(index)
        masked = mask_sample(tokens, self.spec, sample_generator(self.seed, self.split, index))
        return {
            "tokens": torch.from_numpy(masked.inputs),
            "labels": torch.from_numpy(masked.labels),
            "loss_mask": torch.from_numpy(masked.selected.astype(np.float32)),
            "attention_mask": torch.from_numpy((tokens != self.pad).astype(np.int64)),
        }


def build_mlm_datasets(
    cfg: PretrainConfig,
    manifests: list[dict[str, Any]],
    tokenizer: SentencePieceTokenizer,
    num_samples: tuple[int, int, int],
) -> list[MlmDataset | None]:
    """[train, valid, test] masked datasets (None for a split without documents)."""
    from pretrain.special_tokens import mlm_ids

    roles = mlm_ids(cfg, manifests[0])
    spec = masking_spec(cfg.objective, tokenizer, roles)
    windows = build_datasets(
        cfg.data, manifests, tokenizer, cfg.train.seq_length - 2, cfg.seed, num_samples
    )
    o = cfg.objective
    log.info(
        "objective mlm: <s> + %d-token windows + </s>; mask_rate %g (of it %g -> %s, %g random, "
        "%g kept), %d special ids never selected (mask %d, cls %d, sep %d, pad %d)",
        cfg.train.seq_length - 2,
        o.mask_rate,
        o.mask_token_rate,
        o.mask_token,
        o.random_token_rate,
        1.0 - o.mask_token_rate - o.random_token_rate,
        int(spec.special.sum()),
        roles["mask"],
        roles["cls"],
        roles["sep"],
        roles["pad"],
    )
    return [
        None if w is None else MlmDataset(w, spec, roles, cfg.seed, split)
        for split, w in enumerate(windows)
    ]
