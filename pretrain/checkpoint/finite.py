"""NaN/Inf guards: a model with non-finite weights is never saved, and a checkpoint holding
non-finite values is never resumed from.

The training step skips an update whose loss or gradient norm is not finite, but an update can
still produce non-finite weights (a huge learning rate), and a checkpoint corrupted on disk can
load as NaNs. Saving such weights would make `latest` a broken model and let `keep_last`
delete the last good checkpoint, so `check_weights_finite` runs before every save.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from pretrain.checkpoint import layout, state
from pretrain.checkpoint.collective import all_gather
from pretrain.checkpoint.errors import NonFiniteWeights

if TYPE_CHECKING:
    from pretrain.context import TrainContext

_SHOWN = 3
"""How many offending tensor names a message lists."""


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf (one device sync in all)."""
    names, flags = [], []
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            names.append(name)
            flags.append(torch.isfinite(tensor).all())
    if not flags:
        return []
    finite = torch.stack(flags).cpu().tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]


def tensors_of(tree: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """(dotted key, tensor) of every tensor in a nested dict/list (a loaded state dict)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from tensors_of(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from tensors_of(value, f"{prefix}.{index}" if prefix else str(index))


def model_parameters(model: list[torch.nn.Module]) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, parameter) of every chunk (unwrapped), named `model<i>.<param>` when chunked."""
    chunks = [state.unwrap(m) for m in model]
    for index, chunk in enumerate(chunks):
        key = state.model_key(index, len(chunks))
        for name, param in chunk.named_parameters():
            yield f"{key}.{name}", param.detach()


def gathered_names(local: list[str]) -> list[str]:
    """Every rank's offending names (collective), tagged with the rank, on every rank."""
    ranks = all_gather(local[:_SHOWN])
    return [f"{name} (rank {rank})" for rank, names in enumerate(ranks) for name in names]


def check_weights_finite(ctx: TrainContext) -> None:
    """Raise NonFiniteWeights on every rank if any rank's model holds NaN/Inf (collective)."""
    bad = gathered_names(nonfinite_names(model_parameters(ctx.model)))
    if not bad:
        return
    latest = layout.read_latest(ctx.run_dir)
    raise NonFiniteWeights(
        f"the model's weights are not finite after step {ctx.state.step} "
        f"({', '.join(bad[:_SHOWN])}); no checkpoint was written and `latest` keeps "
        f"{latest or 'nothing (no checkpoint yet)'}. An update diverged: lower optim.lr or "
        "raise optim.warmup_steps, then resume from the last good checkpoint"
    ).report()
