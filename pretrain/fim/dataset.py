"""FIM datasets: megatron GPTDataset subclasses whose samples carry fill-in-the-middle units.

data.fim.level=document: `FimDocumentDataset` wraps each shard's IndexedDataset in
`FimIndexedDataset`, which presents every transformed document as its FIM form (3 tokens longer:
`sequence_lengths` + 3, `get(doc, offset, length)` slices the transformed tokens). Megatron then
packs, splits and shuffles the transformed documents exactly as it does plain ones, so no token
is lost and every sample is still a full seq_length + 1 window. The decision per document is a
pure function of (seed, shard, document id): random access, hence exact resume at any consumed
sample.

data.fim.level=context: `FimContextDataset` packs windows of seq_length - 3 (+1) tokens and
transforms each whole window (keyed by its sample index) with probability rate; untransformed
windows get 3 trailing pad sentinels whose labels are out of the loss.

The FIM settings (`FimSpec.unique_identifiers`) are part of megatron's unique description of the
dataset, hence of the index-cache file names and their checked description (pretrain.index_cache),
so FIM and plain indexes never mix.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.config import ConfigError, FimConfig
from pretrain.fim.transform import (
    SENTINELS,
    FimIds,
    char_lengths,
    transform_document,
    transform_unit,
    unit_draws,
    unit_rng,
)
from pretrain.index_cache import CachedGPTDatasetConfig, TrustedGPTDataset

log = logging.getLogger(__name__)

SPEC_VERSION = 1
"""Bump when the transformation changes, so cached indexes of the old one are not reused."""


@dataclass(frozen=True)
class FimSpec:
    """Everything the FIM datasets need: the data.fim settings, sentinel ids, seed, char table."""

    rate: float
    spm_rate: float
    level: str
    seed: int
    ids: FimIds
    eod: int
    lengths: np.ndarray = field(repr=False, compare=False)
    """Characters per token id (`transform.char_lengths`)."""

    @property
    def unique_identifiers(self) -> dict[str, Any]:
        """The settings that change the samples (megatron hashes them into the index names)."""
        return {
            "version": SPEC_VERSION,
            "rate": self.rate,
            "spm_rate": self.spm_rate,
            "level": self.level,
            "seed": self.seed,
            "ids": [self.ids.prefix, self.ids.middle, self.ids.suffix, self.ids.pad],
        }

    def window_length(self, seq_length: int) -> int:
        """The sequence length megatron packs (level=context leaves room for 3 sentinels)."""
        if self.level != "context":
            return seq_length
        if seq_length <= SENTINELS + 1:
            raise ConfigError(
                f"data.fim.level=context needs train.seq_length > {SENTINELS + 1} (3 positions "
                f"go to the sentinels), got {seq_length}"
            )
        return seq_length - SENTINELS


@dataclass
class FimGPTDatasetConfig(CachedGPTDatasetConfig):
    """CachedGPTDatasetConfig plus the FIM spec (part of the dataset's unique identifiers)."""

    fim: FimSpec | None = None


def build_spec(fim: FimConfig, ids: dict[str, int], processor: Any, eod: int, seed: int) -> FimSpec:
    """The FimSpec of data.fim with `ids` from `pretrain.special_tokens.fim_ids`."""
    return FimSpec(
        rate=float(fim.rate),
        spm_rate=float(fim.spm_rate),
        level=fim.level,
        seed=int(seed),
        ids=FimIds(**ids),
        eod=int(eod),
        lengths=char_lengths(processor),
    )


def path_salt(*parts: str) -> int:
    """A 63-bit salt from names that identify a unit's source (stable across machines)."""
    digest = hashlib.sha256("/".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def shard_salt(dataset_path: str) -> int:
    """Salt of a shard prefix: its directory and file name (not the absolute path)."""
    path = Path(dataset_path)
    return path_salt("document", path.parent.name, path.name)


class FimIndexedDataset:
    """An IndexedDataset whose documents are FIM-transformed with probability spec.rate."""

    def __init__(self, base: Any, spec: FimSpec, salt: int) -> None:
        self.base = base
        self.spec = spec
        self.salt = salt
        count = base.sequence_lengths.shape[0]
        draw, spm_draw = unit_draws(spec.seed, salt, np.arange(count))
        self.transformed = draw < spec.rate
        self.spm = self.transformed & (spm_draw < spec.spm_rate)
        lengths = np.asarray(base.sequence_lengths, dtype=np.int64) + SENTINELS * self.transformed
        self.sequence_lengths = lengths.astype(np.int32)

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def document(self, idx: int) -> np.ndarray:
        """Document `idx` as training sees it (transformed or not), EOD included."""
        doc = self.base.get(int(idx))
        if not self.transformed[idx]:
            return doc
        rng = unit_rng(self.spec.seed, self.salt, int(idx))
        spec = self.spec
        return transform_document(doc, spec.eod, spec.lengths, spec.ids, bool(self.spm[idx]), rng)

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of document `idx` as training sees it."""
        if not self.transformed[idx]:
            return self.base.get(idx, offset=offset, length=length)
        end = None if length is None else offset + length
        return self.document(idx)[offset:end]


class FimDocumentDataset(TrustedGPTDataset):
    """GPTDataset over FIM-transformed documents (data.fim.level=document)."""

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*TrustedGPTDataset._key_config_attributes(), "fim"]

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: Any) -> FimIndexedDataset:
        base = TrustedGPTDataset.build_low_level_dataset(dataset_path, config)
        wrapped = FimIndexedDataset(base, config.fim, shard_salt(dataset_path))
        log.info(
            "data.fim: %s: %d of %d documents transformed (%d SPM)",
            dataset_path,
            int(wrapped.transformed.sum()),
            len(wrapped.transformed),
            int(wrapped.spm.sum()),
        )
        return wrapped


class FimContextDataset(TrustedGPTDataset):
    """GPTDataset whose whole packed windows are FIM-transformed (data.fim.level=context).

    `config.sequence_length` is train.seq_length - 3 (`FimSpec.window_length`): each sample is
    that window + 1 token, transformed (+3 sentinels) or followed by 3 pad sentinels.
    """

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return [*TrustedGPTDataset._key_config_attributes(), "fim"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.config.fim
        self.salt = path_salt("context", str(self.dataset_path), self.index_split.name)
        draw, _ = unit_draws(spec.seed, self.salt, np.arange(len(self)))
        log.info(
            "data.fim: %s %s: %d of %d windows transformed",
            self.dataset_path,
            self.index_split.name,
            int((draw < spec.rate).sum()),
            len(self),
        )

    def window(self, idx: int) -> np.ndarray:
        """Sample `idx` as seq_length + 1 token ids (transformed, or ending in 3 pads)."""
        spec = self.config.fim
        text, _ = self._query_document_sample_shuffle_indices(idx)
        draw, spm_draw = unit_draws(spec.seed, self.salt, np.array([idx]))
        if draw[0] < spec.rate:
            rng = unit_rng(spec.seed, self.salt, idx)
            return transform_unit(
                text, spec.lengths, spec.ids, bool(spm_draw[0] < spec.spm_rate), rng
            )
        return np.concatenate((text, np.full(SENTINELS, spec.ids.pad, dtype=text.dtype)))

    def __getitem__(self, idx: int | None) -> dict[str, torch.Tensor]:
        text = torch.from_numpy(self.window(0 if idx is None else int(idx))).long()
        tokens, labels = text[:-1].contiguous(), text[1:].contiguous()
        loss_mask = torch.ones(tokens.shape, dtype=torch.float)
        loss_mask[labels == self.config.fim.ids.pad] = 0.0
        # megatron's own padding of short windows (never in the loss, mapped to id 0)
        loss_mask[labels == self._pad_token_id] = 0.0
        tokens[tokens == self._pad_token_id] = 0
        labels[labels == self._pad_token_id] = 0
        if idx is None:
            loss_mask.zero_()
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": torch.arange(tokens.shape[0], dtype=torch.long),
        }


def dataset_class(spec: FimSpec) -> type[TrustedGPTDataset]:
    """The dataset class for spec.level."""
    return FimContextDataset if spec.level == "context" else FimDocumentDataset
