"""The token budget of a run against its data manifests: epochs per dataset, and warnings.

The run's tokens are `steps x train.global_batch_size x train.seq_length` (steps from
`train.max_tokens` when set, `TrainConfig.steps_for`). Each data dir gets the share of them that
`pretrain.data.build_blend` gives it: `data.weights[i] / sum(data.weights)`, or its share of all
tokens when `data.weights=null`. Its epochs are that share over the tokens of its *train* split
(`data.split`'s first share of its documents, counted as the same share of its tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pretrain.config import PretrainConfig
from pretrain.plan.types import BudgetEstimate

TINY_BATCH_SEQUENCES = 32
"""Fewer sequences per step than this is a tiny global batch (noisy gradients)."""
TINY_BATCH_TOKENS = 1_000_000
"""Fewer tokens per step than this is a tiny global batch for a model above BIG_MODEL_PARAMS."""
BIG_MODEL_PARAMS = 1_000_000_000
LENGTH_SAMPLE_DOCS = 1_000_000
"""Document lengths read per data dir (from its first shard's .idx) for the median."""
_IDX_HEADER_BYTES = 34


def run_tokens(cfg: PretrainConfig) -> tuple[int, int]:
    """(steps, training tokens) of the configured run."""
    per_step = cfg.train.global_batch_size * cfg.train.seq_length
    steps = cfg.train.steps_for(per_step)
    return steps, steps * per_step


def train_share(split: str) -> float:
    """The train part of `data.split` ('98,1,1' -> 0.98); 1.0 when it cannot be parsed."""
    try:
        shares = [float(x) for x in str(split).split(",")]
    except ValueError:
        return 1.0
    total = sum(shares)
    return shares[0] / total if shares and total > 0 else 1.0


def blend_shares(weights: list[float] | None, manifests: list[dict[str, Any]]) -> list[float]:
    """Each data dir's share of the training samples (as `pretrain.data.build_blend` weights)."""
    raw = (
        [float(w) for w in weights]
        if weights is not None
        else [float(m["totals"]["num_tokens"]) for m in manifests]
    )
    total = sum(raw) or 1.0
    return [w / total for w in raw]


def median_doc_tokens(manifest: dict[str, Any]) -> float | None:
    """Median document length of a data dir, read from its first shard's .idx (the first
    LENGTH_SAMPLE_DOCS documents); None when the shard file is not there."""
    if not manifest.get("shards"):
        return None
    idx = Path(manifest["dir"]) / f"{manifest['shards'][0]['prefix']}.idx"
    try:
        count = min(int(manifest["shards"][0]["num_docs"]), LENGTH_SAMPLE_DOCS)
        lengths = np.fromfile(idx, dtype="<i4", count=count, offset=_IDX_HEADER_BYTES)
    except (OSError, KeyError, ValueError):
        return None
    return float(np.median(lengths)) if lengths.size else None


def _doc_tokens(manifest: dict[str, Any]) -> tuple[float, str]:
    """(typical document length, 'median' | 'mean') of a data dir."""
    median = median_doc_tokens(manifest)
    if median is not None:
        return median, "median"
    totals = manifest["totals"]
    return totals["num_tokens"] / max(1, totals["num_docs"]), "mean"


def _batch_warnings(cfg: PretrainConfig, total_params: int | None) -> list[str]:
    t = cfg.train
    tokens = t.global_batch_size * t.seq_length
    out = []
    if t.global_batch_size < TINY_BATCH_SEQUENCES:
        out.append(
            f"tiny global batch: train.global_batch_size={t.global_batch_size} sequences per "
            f"step (< {TINY_BATCH_SEQUENCES}); gradients will be noisy"
        )
    elif (
        total_params is not None and total_params > BIG_MODEL_PARAMS and tokens < TINY_BATCH_TOKENS
    ):
        out.append(
            f"tiny global batch: {tokens:,} tokens per step (train.global_batch_size="
            f"{t.global_batch_size} x train.seq_length={t.seq_length}) for a "
            f"{total_params / 1e9:.1f}B model; models above 1B train with >= 1M tokens per step"
        )
    return out


def _warmup_warning(cfg: PretrainConfig, steps: int) -> list[str]:
    warmup = cfg.optim.warmup_steps
    if warmup < steps:
        return []
    return [
        f"warmup longer than the run: optim.warmup_steps={warmup} >= {steps} steps; the "
        "learning rate never reaches optim.lr (lower optim.warmup_steps)"
    ]


def _data_warnings(
    cfg: PretrainConfig, manifests: list[dict[str, Any]], epochs: dict[str, float]
) -> list[str]:
    out = []
    for path, manifest in zip(cfg.data.paths, manifests, strict=False):
        if epochs[path] > 1.0:
            out.append(
                f"{epochs[path]:.2f} epochs over {path}: the run repeats its documents "
                "(more data, a lower data.weights entry or a smaller train.max_tokens)"
            )
        length, kind = _doc_tokens(manifest)
        if cfg.train.seq_length > length:
            out.append(
                f"train.seq_length={cfg.train.seq_length} is longer than most documents of "
                f"{path} ({kind} {length:,.0f} tokens): most samples pack several documents "
                "(attention crosses EOD)"
            )
    return out


def estimate_budget(
    cfg: PretrainConfig, manifests: list[dict[str, Any]], total_params: int | None = None
) -> BudgetEstimate:
    """Training tokens, epochs over each `data.paths` dir, and the budget warnings.

    `manifests` are the parsed manifests of `data.paths` (`pretrain.validate.validate`'s return
    value), in order; `total_params` enables the tiny-batch check for models above 1B.
    """
    if cfg.objective.name == "llava":
        return _image_text_budget(cfg, manifests)
    steps, tokens = run_tokens(cfg)
    shares = blend_shares(cfg.data.weights, manifests)
    split = train_share(cfg.data.split)
    epochs = {
        path: tokens * share / max(1.0, manifest["totals"]["num_tokens"] * split)
        for path, share, manifest in zip(cfg.data.paths, shares, manifests, strict=False)
    }
    warnings = [
        *_batch_warnings(cfg, total_params),
        *_warmup_warning(cfg, steps),
        *_data_warnings(cfg, manifests, epochs),
    ]
    return BudgetEstimate(tokens=tokens, epochs=epochs, warnings=warnings)


def _image_text_budget(cfg: PretrainConfig, manifests: list[dict[str, Any]]) -> BudgetEstimate:
    """objective=llava: epochs counted in image-caption samples (manifest image_text), and a
    warning that the planner's parameters, memory and FLOPs are the language model's only."""
    steps, tokens = run_tokens(cfg)
    counts = [float(m.get("image_text", {}).get("num_samples", 0)) for m in manifests]
    weights = cfg.data.weights if cfg.data.weights is not None else counts
    total = sum(float(w) for w in weights) or 1.0
    split = 1.0 if cfg.data.valid_paths else train_share(cfg.data.split)
    samples = steps * cfg.train.global_batch_size
    epochs = {
        path: samples * float(w) / total / max(1.0, count * split)
        for path, w, count in zip(cfg.data.paths, weights, counts, strict=False)
    }
    warnings = [
        "objective=llava: parameters, memory and FLOPs are the language model's; the ViT "
        f"(vision.num_layers={cfg.vision.num_layers}, vision.hidden_size="
        f"{cfg.vision.hidden_size}) and the projector are not counted, nor the "
        f"{cfg.vision.num_patches()} image positions each sample adds",
        *_batch_warnings(cfg, None),
        *_warmup_warning(cfg, steps),
    ]
    warnings += [
        f"{epochs[path]:.2f} epochs over {path}: the run repeats its image-caption pairs"
        for path in cfg.data.paths
        if epochs.get(path, 0.0) > 1.0
    ]
    return BudgetEstimate(tokens=tokens, epochs=epochs, warnings=warnings)
