"""Build the SFT train/valid/test datasets of a run and log what packing does with them."""

from __future__ import annotations

import logging
from typing import Any

from pretrain.config import ConfigError, DataConfig, ObjectiveConfig, PretrainConfig
from pretrain.sft.dataset import (
    SPLITS,
    Examples,
    SftDataset,
    open_shards,
    pad_id_of,
    select_examples,
)

log = logging.getLogger("pretrain")


def sft_attention(cfg: PretrainConfig) -> str | None:
    """objective=sft: dense mask, TE thd or causal (`pretrain.sft.attention`); lm: None."""
    if cfg.objective.name != "sft":
        return None
    from pretrain.model import have_transformer_engine
    from pretrain.sft.attention import attention_kind

    return attention_kind(cfg.objective.pack, have_transformer_engine())


def build_run_datasets(
    cfg: PretrainConfig,
    manifests: list[dict[str, Any]],
    attention: str,
    num_samples: tuple[int, int, int],
) -> list[SftDataset | None]:
    """The run's [train, valid, test] SFT datasets (valid from data.valid_paths if set)."""
    from pretrain.data_checks import read_valid_manifests

    log.info(
        "objective sft: loss on target tokens only (mean over the global batch's targets), "
        "attention %s, pack=%s",
        attention,
        cfg.objective.pack,
    )
    return build_sft_datasets(
        cfg.data,
        cfg.objective,
        manifests,
        read_valid_manifests(cfg.data),
        cfg.train.seq_length,
        cfg.seed,
        num_samples,
    )


def split_examples(
    data_cfg: DataConfig,
    manifests: list[dict[str, Any]],
    valid_manifests: list[dict[str, Any]] | None,
) -> list[Examples]:
    """The examples of train, valid, test: data.split of data.paths; valid = every document
    of data.valid_paths when given (data.split's valid share of data.paths is then unused)."""
    shards = open_shards(manifests)
    splits = [select_examples(shards, data_cfg.split, which) for which in range(3)]
    if valid_manifests:
        splits[1] = select_examples(open_shards(valid_manifests), None, 1)
    return splits


def build_sft_datasets(
    data_cfg: DataConfig,
    objective_cfg: ObjectiveConfig,
    manifests: list[dict[str, Any]],
    valid_manifests: list[dict[str, Any]] | None,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
) -> list[SftDataset | None]:
    """[train, valid, test] SFT datasets (None for a split without usable examples)."""
    pad = pad_id_of(manifests[0])
    datasets: list[SftDataset | None] = []
    for which, examples in enumerate(split_examples(data_cfg, manifests, valid_manifests)):
        dataset = None
        if len(examples) > 0:
            try:
                dataset = SftDataset(
                    examples,
                    seq_length,
                    seed,
                    max(num_samples[which], 1),
                    objective_cfg.pack,
                    pad,
                    SPLITS[which],
                )
            except ValueError:  # only one-token examples
                dataset = None
        datasets.append(dataset)
    if datasets[0] is None:
        raise ConfigError(
            f"data.split={data_cfg.split}: the training split of data.paths has no example of "
            "two or more tokens; give train a larger share or more data"
        )
    for dataset in datasets:
        if dataset is not None:
            log_dataset(dataset, objective_cfg.pack)
    return datasets


def log_dataset(dataset: SftDataset, pack: bool) -> None:
    """One line per split: examples, samples, truncation and packing efficiency."""
    if dataset.num_truncated:
        log.warning(
            "sft %s: %d of %d examples are longer than train.seq_length + 1 = %d tokens and "
            "are truncated to it",
            dataset.name,
            dataset.num_truncated,
            len(dataset.examples),
            dataset.seq_length + 1,
        )
    log.info(
        "sft %s: %d examples -> %d samples of %d positions (%d epochs, pack=%s) | packing "
        "efficiency %.3f (target tokens / tokens), fill %.3f (example tokens / tokens)",
        dataset.name,
        len(dataset.examples),
        len(dataset),
        dataset.seq_length,
        dataset.index.epochs,
        pack,
        dataset.packing_efficiency(),
        dataset.fill(),
    )
