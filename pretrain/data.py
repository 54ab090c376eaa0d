"""Training data: data-pipeline directories -> megatron GPTDataset -> per-rank micro-batches.

Reads only the directory contract of docs/data_format.md (manifest.json, tokenizer.model,
shard_*.bin/.idx); never imports data_pipeline. Samples are packed across documents with EOD by
megatron's GPTDataset, deterministic for a seed; the iterators start at `consumed_samples`, so a
resumed run continues with exactly the batches an uninterrupted run would have seen.
The start-of-run file checks live in `pretrain.data_checks` (re-exported here), the index
cache (in memory unless data.cache_dir is set; never unpickled) in `pretrain.index_cache`.
With data.fim.rate > 0 the datasets are `pretrain.fim.dataset`'s (fill-in-the-middle).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pretrain.config import ConfigError, DataConfig
from pretrain.data_checks import check_manifests, read_manifest

log = logging.getLogger(__name__)


class SentencePieceTokenizer:
    """The data's SentencePiece model, with the attributes megatron's GPTDataset reads.

    `pad` is the manifest's pad_id (-1 when the model has none, megatron's "no pad"), never
    the EOD id, so real EOD tokens are never masked out of the loss.
    """

    def __init__(self, manifest: dict[str, Any]) -> None:
        import sentencepiece as spm

        info = manifest["tokenizer"]
        self.path = str(Path(manifest["dir"]) / info["path"])
        self.processor = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = int(info["vocab_size"])
        self.eod = int(info["eod_id"])
        self.bos = int(info.get("bos_id", -1))
        self.pad = int(info.get("pad_id", -1))
        self.unique_identifiers = OrderedDict(
            [("class", "SentencePieceTokenizer"), ("sha256", info["sha256"])]
        )

    @property
    def eos(self) -> int:
        """Alias of eod (megatron checks it for pad collisions)."""
        return self.eod

    def tokenize(self, text: str) -> list[int]:
        """Text -> token ids."""
        return list(self.processor.encode(text))

    def detokenize(self, ids: list[int]) -> str:
        """Token ids -> text (ids beyond the vocab, i.e. padding rows, are dropped)."""
        return self.processor.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])


def build_blend(
    data_cfg: DataConfig, manifests: list[dict[str, Any]]
) -> tuple[list[str], list[float] | None]:
    """Megatron blend: every shard prefix, weighted by dir weight x shard's share of its dir."""
    if data_cfg.weights is not None and len(data_cfg.weights) != len(manifests):
        raise ConfigError(
            f"data.weights has {len(data_cfg.weights)} entries but data.paths has "
            f"{len(manifests)}; give one weight per path or data.weights=null"
        )
    prefixes: list[str] = []
    weights: list[float] = []
    for i, manifest in enumerate(manifests):
        total = sum(s["num_tokens"] for s in manifest["shards"]) or 1
        dir_weight = data_cfg.weights[i] if data_cfg.weights is not None else total
        for shard in manifest["shards"]:
            prefixes.append(str(Path(manifest["dir"]) / shard["prefix"]))
            weights.append(float(dir_weight) * shard["num_tokens"] / total)
    if len(prefixes) == 1:
        return prefixes, None
    return prefixes, weights


def build_datasets(
    data_cfg: DataConfig,
    manifests: list[dict[str, Any]],
    tokenizer: SentencePieceTokenizer,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
) -> list[Any]:
    """Train/valid/test datasets (megatron GPTDataset/BlendedDataset; None for empty splits)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )

    from pretrain import index_cache

    cls, config_cls, extra = index_cache.TrustedGPTDataset, index_cache.CachedGPTDatasetConfig, {}
    fim_key, window = None, seq_length
    if data_cfg.fim.rate > 0:
        from pretrain.fim import dataset as fim_dataset

        spec = fim_spec(data_cfg, manifests[0], tokenizer, seed)
        cls, config_cls, extra = (
            fim_dataset.dataset_class(spec),
            fim_dataset.FimGPTDatasetConfig,
            {"fim": spec},
        )
        fim_key, window = spec.unique_identifiers, spec.window_length(seq_length)
    folder = None
    if data_cfg.cache_dir:
        folder = index_cache.cache_folder(
            data_cfg.cache_dir, manifests, data_cfg.split, seq_length, seed, fim_key
        )
        index_cache.check_folder(folder)  # every rank, so a bad file fails all of them
        log.info("dataset indexes: cached in %s", folder)
    else:
        log.info("dataset indexes: built in memory (data.cache_dir=null)")
    config = config_cls(
        random_seed=seed,
        sequence_length=window,
        blend=build_blend(data_cfg, manifests),
        split=data_cfg.split,
        path_to_cache=index_cache.IN_MEMORY,
        index_cache=None if folder is None else str(folder),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.05,
        **extra,
    )
    _drop_empty_splits(config, manifests)
    builder = BlendedMegatronDatasetBuilder(cls, list(num_samples), lambda: True, config)
    return builder.build()


def fim_spec(
    data_cfg: DataConfig, manifest: dict[str, Any], tokenizer: SentencePieceTokenizer, seed: int
) -> Any:
    """The FIM settings of data.fim with the sentinel ids of the data's tokenizer (ConfigError
    naming data.fim.*_token when one is missing)."""
    from pretrain.fim.dataset import build_spec
    from pretrain.special_tokens import piece_ids

    roles = data_cfg.fim.tokens()
    ids = piece_ids(manifest, {f"data.fim.{role}_token": piece for role, piece in roles.items()})
    by_role = {role: ids[f"data.fim.{role}_token"] for role in roles}
    return build_spec(data_cfg.fim, by_role, tokenizer.processor, tokenizer.eod, seed)


_SPLITS = ("train", "valid", "test")


def _drop_empty_splits(config: Any, manifests: list[dict[str, Any]]) -> None:
    """Turn off a split that some shard has no documents for (megatron would loop forever).

    Megatron rounds each split's document range per shard; a tiny shard can get zero documents
    for `valid`/`test`. Clearing that split's entry keeps the other splits' documents unchanged.
    """
    for i, bounds in enumerate(config.split_matrix):
        if bounds is None:
            continue
        for manifest in manifests:
            empty = [
                shard["prefix"]
                for shard in manifest["shards"]
                if round(bounds[1] * shard["num_docs"]) <= round(bounds[0] * shard["num_docs"])
            ]
            if not empty:
                continue
            if i == 0:
                raise ConfigError(
                    f"data.split={config.split}: shard {empty[0]} of {manifest['dir']} gets no "
                    "training documents; give train a larger share or prepare bigger shards"
                )
            log.warning(
                "data.split=%s: shard %s of %s has no %s documents; the %s split is disabled",
                config.split,
                empty[0],
                manifest["dir"],
                _SPLITS[i],
                _SPLITS[i],
            )
            config.split_matrix[i] = None
            break


BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")
"""The tensors of a pretraining micro-batch."""


def micro_batches(
    dataset: Any,
    start_sample: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
    keys: tuple[str, ...] = BATCH_KEYS,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless micro-batches for one DP rank, Megatron's pretraining-sampler order.

    Micro-batch k covers global samples [start + k*mbs*dp, start + (k+1)*mbs*dp); DP rank r
    takes its r-th slice of `micro_batch_size`. The order is independent of DP size, so DP=2 sees
    the same samples per step as DP=1 with twice the accumulation.
    """
    size = len(dataset)
    position = start_sample
    while True:
        first = position + dp_rank * micro_batch_size
        items = [dataset[(first + j) % size] for j in range(micro_batch_size)]
        position += micro_batch_size * dp_size
        yield {key: torch.stack([item[key] for item in items]) for key in keys}


def dataset_num_samples(
    max_steps: int, global_batch: int, eval_interval: int, eval_iters: int
) -> tuple[int, int, int]:
    """Samples each split must provide (megatron sizes its index arrays from these)."""
    evals = (max_steps // eval_interval if eval_interval > 0 else 0) + 1
    return max_steps * global_batch, evals * eval_iters * global_batch, eval_iters * global_batch


__all__ = [
    "BATCH_KEYS",
    "SentencePieceTokenizer",
    "build_blend",
    "build_datasets",
    "check_manifests",
    "dataset_num_samples",
    "micro_batches",
    "read_manifest",
]
