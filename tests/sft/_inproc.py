"""In-process SFT runs: one gloo process (this pytest process), the real `pretrain.train.setup`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from pretrain.config import PretrainConfig

QUIET = [
    "logging.wandb.mode=disabled",
    "logging.report=false",
    "sample.enabled=false",
    "checkpoint.save_at_end=false",
    "eval.interval=0",
    "eval.iters=0",
]
"""Overrides that keep an in-process run small and free of side outputs."""


def sft_overrides(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A 2-layer hidden-64 GPT on `data_dir` with objective=sft, fp32, seq 64."""
    return [
        *QUIET,
        "objective=sft",
        f"data.paths=[{data_dir}]",
        f"run.dir={run_dir}",
        "data.split='90,5,5'",
        "train.max_steps=3",
        "train.micro_batch_size=2",
        "train.global_batch_size=8",
        "train.seq_length=64",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        "optim.warmup_steps=1",
        *extra,
    ]


def compose(overrides: list[str]) -> PretrainConfig:
    """The typed config `python -m pretrain overrides` would run."""
    from omegaconf import OmegaConf

    from pretrain.launch.resolve import compose_config

    return OmegaConf.to_object(compose_config(overrides))


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """megatron parallel_state over a single gloo process; torn down afterwards."""
    from pretrain.config import ParallelConfig
    from pretrain.parallel import init_distributed, teardown

    init_distributed(ParallelConfig(), seed=1234)
    try:
        yield
    finally:
        teardown()


@contextlib.contextmanager
def sft_context(overrides: list[str]) -> Iterator:
    """`pretrain.train.setup` of the composed config in this process (validated first)."""
    from pretrain.parallel import teardown
    from pretrain.train import setup
    from pretrain.validate import validate

    cfg = compose(overrides)
    manifests = validate(cfg, world_size=1)
    ctx = setup(cfg, manifests)
    try:
        yield ctx
    finally:
        ctx.logger.finish()
        ctx.preemption.uninstall()
        teardown()
