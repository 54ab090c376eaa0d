"""One plan: parameters, memory, communication, time and token budget of a config on a cluster.

`build_plan` only composes the planner's modules (each documents its formulas):
`params.count_params` (exact per-rank counts), `memory.estimate_memory` (weights, gradients,
optimizer from `state_memory.static_memory`, activations after Korthikanti et al. 2022, framework
overhead), `comm.estimate_comm` (bytes per collective kind, ring times on the stated links),
`timing.estimate_time` (FLOPs at `cluster.mfu`, the 1F1B bubble of Narayanan et al. 2021, exposed
communication), `search.suggest_layout` (the fastest predicted layout that fits) and
`budget.estimate_budget` (epochs over the data manifests). It builds nothing, starts no
process group and imports no megatron.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pretrain.config import PretrainConfig
from pretrain.plan.budget import estimate_budget, run_tokens
from pretrain.plan.comm import estimate_comm
from pretrain.plan.hardware import detect_gpu, gpu_spec
from pretrain.plan.layout import layout_of, with_layout
from pretrain.plan.memory import estimate_memory
from pretrain.plan.params import count_params
from pretrain.plan.search import suggest_layout
from pretrain.plan.timing import estimate_time
from pretrain.plan.types import (
    BudgetEstimate,
    CommEstimate,
    GpuSpec,
    Layout,
    MemoryEstimate,
    ParamCounts,
    TimeEstimate,
)

DEFAULT_GPU = "h100"
"""The planner's GPU when cluster.gpu=null and no CUDA device is visible."""
DEFAULT_VOCAB = {"llama": 128_256, "gpt2": 50_257}
"""Vocabulary assumed without data manifests and model.vocab_size=null, by preset name prefix
(the vocabulary the preset was published with: Llama 3, GPT-2)."""
FASTER = 0.98
"""A layout that fits is shown as "a faster layout" only below this fraction of its step time."""
FALLBACK_VOCAB = 32_000
"""... and for any other model (the repo's `tokenizer=bpe_32k`)."""


@dataclass
class Plan:
    """Everything `python -m pretrain.plan` reports for one config and world size."""

    layout: Layout
    gpu: GpuSpec
    params: ParamCounts
    memory: MemoryEstimate
    comm: CommEstimate
    time: TimeEstimate
    budget: BudgetEstimate | None
    """None without data manifests (data.paths not prepared yet)."""
    fits: bool
    """memory.total <= gpu.memory_bytes."""
    suggestion: Layout | None = None
    """The fastest predicted layout that fits (None: none found, or the configured one)."""
    suggestion_memory: MemoryEstimate | None = None
    suggestion_time: TimeEstimate | None = None
    warnings: list[str] = field(default_factory=list)
    vocab_size: int = 0
    vocab_source: str = ""
    """Where vocab_size came from: the data's tokenizer, model.vocab_size or a default."""
    mfu: float = 0.0
    """The assumed model FLOPs utilisation (cluster.mfu)."""
    tokens: int = 0
    """Training tokens of the run (steps x global batch x sequence length)."""


def plan_vocab(cfg: PretrainConfig, manifests: list[dict[str, Any]] | None) -> tuple[int, str]:
    """(vocabulary, where it came from): the data's tokenizer, model.vocab_size or a default."""
    if manifests:
        return int(manifests[0]["tokenizer"]["vocab_size"]), "the tokenizer of data.paths[0]"
    if cfg.model.vocab_size is not None:
        return cfg.model.vocab_size, "model.vocab_size"
    for prefix, vocab in DEFAULT_VOCAB.items():
        if cfg.model.name.startswith(prefix):
            return vocab, f"assumed: {cfg.model.name}'s published vocabulary"
    return FALLBACK_VOCAB, "assumed"


def plan_gpu(cfg: PretrainConfig) -> GpuSpec:
    """cluster.gpu, else the visible CUDA device, else DEFAULT_GPU (ConfigError: unknown)."""
    if cfg.cluster.gpu is not None:
        return gpu_spec(cfg.cluster.gpu)
    return detect_gpu() or gpu_spec(DEFAULT_GPU)


def _with_vocab(cfg: PretrainConfig, vocab: int) -> PretrainConfig:
    """A copy with model.vocab_size set, so every estimate pads the same vocabulary."""
    model = dataclasses.replace(cfg.model, vocab_size=vocab)
    return dataclasses.replace(cfg, model=model)


@dataclass
class _Estimates:
    params: ParamCounts
    memory: MemoryEstimate
    comm: CommEstimate
    time: TimeEstimate


def _estimate(cfg: PretrainConfig, layout: Layout, gpu: GpuSpec, vocab: int) -> _Estimates:
    counts = count_params(cfg.model, vocab, layout)
    memory = estimate_memory(cfg, counts, layout, cfg.cluster)
    comm = estimate_comm(cfg, counts, layout, cfg.cluster)
    time = estimate_time(cfg, layout, cfg.cluster, gpu, comm)
    return _Estimates(counts, memory, comm, time)


def _vocab_warning(source: str, vocab: int) -> list[str]:
    if not source.startswith("assumed"):
        return []
    return [
        f"no data manifest and model.vocab_size=null: a vocabulary of {vocab:,} is {source}; "
        "set model.vocab_size=N or prepare data.paths for the exact count"
    ]


def _suggest(
    cfg: PretrainConfig, own: _Estimates, layout: Layout, gpu: GpuSpec, world_size: int
) -> tuple[Layout | None, _Estimates | None]:
    """The search's layout and its estimates; for a config that fits, only a clearly faster one."""
    vocab = cfg.model.vocab_size or 0
    found = suggest_layout(cfg, cfg.cluster, gpu, vocab, world_size)
    if found is None or found == layout:
        return None, None
    est = _estimate(with_layout(cfg, found), found, gpu, vocab)
    fits = own.memory.total <= gpu.memory_bytes
    if fits and est.time.step_time_s > FASTER * own.time.step_time_s:
        return None, None
    return found, est


def build_plan(
    cfg: PretrainConfig,
    world_size: int,
    manifests: list[dict[str, Any]] | None = None,
    search: bool = True,
    gpu: GpuSpec | None = None,
) -> Plan:
    """The plan of `cfg` on `world_size` GPUs of type `gpu` (default: `plan_gpu(cfg)`).

    Args:
        cfg: a validated config (`pretrain.validate.validate(cfg, world_size)`).
        world_size: GPUs of the job (TP x PP x DP).
        manifests: the parsed data manifests (validate's return value): the vocabulary and the
            token budget come from them; None plans without the budget.
        search: also search for the fastest layout that fits (`search.suggest_layout`).
        gpu: the accelerator; None resolves cluster.gpu / the visible device / h100.
    """
    gpu = gpu or plan_gpu(cfg)
    vocab, source = plan_vocab(cfg, manifests)
    cfg = _with_vocab(cfg, vocab)
    layout = layout_of(cfg, world_size)
    est = _estimate(cfg, layout, gpu, vocab)
    checked = estimate_budget(cfg, manifests or [], est.params.total)
    budget = checked if manifests else None
    suggestion, suggested = _suggest(cfg, est, layout, gpu, world_size) if search else (None, None)
    return Plan(
        layout=layout,
        gpu=gpu,
        params=est.params,
        memory=est.memory,
        comm=est.comm,
        time=est.time,
        budget=budget,
        fits=est.memory.total <= gpu.memory_bytes,
        suggestion=suggestion,
        suggestion_memory=suggested.memory if suggested else None,
        suggestion_time=suggested.time if suggested else None,
        warnings=[*_vocab_warning(source, vocab), *checked.warnings],
        vocab_size=vocab,
        vocab_source=source,
        mfu=cfg.cluster.mfu,
        tokens=run_tokens(cfg)[1],
    )


LAYOUT_KEYS = (
    ("tp", "parallel.tensor_model_parallel_size"),
    ("pp", "parallel.pipeline_model_parallel_size"),
    ("vpp", "parallel.virtual_pipeline_model_parallel_size"),
    ("sp", "parallel.sequence_parallel"),
    ("dist_opt", "parallel.use_distributed_optimizer"),
    ("micro_batch", "train.micro_batch_size"),
    ("recompute", "train.activation_recompute"),
)
"""Layout field -> the override key that sets it (DP follows from the world size)."""


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def layout_overrides(layout: Layout, current: Layout | None = None) -> list[str]:
    """`key=value` overrides that select `layout` (only the keys that differ from `current`)."""
    return [
        f"{key}={_value(getattr(layout, name))}"
        for name, key in LAYOUT_KEYS
        if current is None or getattr(layout, name) != getattr(current, name)
    ]
