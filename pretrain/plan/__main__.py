"""`python -m pretrain.plan [training overrides] cluster.num_gpus=N cluster.gpu=h100`.

The same Hydra config as training (`pretrain_pipeline_conf`, config `pretrain`, strict keys) and
the same `validate(cfg, world_size)`, with world size = cluster.num_gpus (default
cluster.gpus_per_node). Data dirs without a manifest are allowed here (the plan is then made
without the token budget, and the vocabulary comes from model.vocab_size or a stated default);
any other config error exits 2 as in training. Builds nothing, starts no process group, imports
no megatron. Prints the table, then one JSON line (last). Exit 0: fits, 1: does not fit in GPU
memory, 2: config error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pretrain_pipeline_conf import CONFIG_PATH
from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR, TaskExit, run_app, unknown_keys

EXIT_DOES_NOT_FIT = 1
JOB = "pretrain.plan"
EXAMPLES = (
    "python -m pretrain.plan model=llama-70b parallel=tp8 \\",
    "    parallel.pipeline_model_parallel_size=4 precision=bf16 train=llama optim=llama \\",
    "    cluster.num_gpus=1024 cluster.gpu=h100",
    "python -m pretrain.plan model=llama-8b parallel=tp2 precision=bf16 train=llama \\",
    "    'data.paths=[checkpoints/data/web]' cluster.num_gpus=64 cluster.gpu=h200",
    "python -m pretrain.plan model=tiny cluster.num_gpus=1   # the debug run, one GPU",
)


def plan_help() -> str:
    """`--help`: usage, the cluster keys with defaults and meaning, the GPU names."""
    import dataclasses
    import textwrap

    from pretrain.config import ClusterConfig
    from pretrain.plan.hardware import gpu_names
    from pretrain_pipeline_conf.hydra_app import field_docs

    docs = field_docs(ClusterConfig)
    lines = [
        "python -m pretrain.plan [training overrides ...] cluster.num_gpus=N cluster.gpu=NAME",
        "",
        "Predicts, without a GPU, what `torchrun -m pretrain` with the same overrides would need:",
        "parameters per rank, memory per GPU (fits or not, and a layout that fits), communication",
        "per step, step time, tokens/s, wall clock and GPU-hours, epochs over the data manifests.",
        "Prints a table, then one JSON line. Exit status: 0 fits, 1 does not fit, 2 config error.",
        "Every training key works (`python -m pretrain --help`); docs/planner.md explains it all.",
        "",
        "Examples:",
        *(f"  {e}" for e in EXAMPLES),
        "",
        "Cluster keys (key=default):",
    ]
    for f in dataclasses.fields(ClusterConfig):
        lines.append(f"  cluster.{f.name}={'null' if f.default is None else f.default}")
        lines += textwrap.wrap(
            docs.get(f.name, ""), 92, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    lines += ["", f"GPU names (cluster.gpu): {', '.join(gpu_names())}"]
    return "\n".join(lines)


def _config_error(message: str) -> None:
    print(f"{JOB}: config error: {message}", file=sys.stderr, flush=True)
    raise TaskExit(EXIT_CONFIG_ERROR, message)


def validate_for_plan(cfg: Any, world_size: int) -> list[dict[str, Any]] | None:
    """Training's `validate(cfg, world_size)`; None (no manifests) when the only problem is a
    data dir without manifest.json (every other check runs before the data's)."""
    from pretrain.config import ConfigError
    from pretrain.validate import validate

    unprepared = [p for p in cfg.data.paths if not (Path(p) / "manifest.json").is_file()]
    try:
        return validate(cfg, world_size)
    except ConfigError as exc:
        if unprepared and "no manifest.json" in str(exc):
            return None
        raise


def world_size_of(cfg: Any) -> int:
    """cluster.num_gpus, default cluster.gpus_per_node (one node)."""
    return cfg.cluster.num_gpus or cfg.cluster.gpus_per_node


def _task(dict_cfg: Any) -> None:
    from omegaconf import OmegaConf

    from pretrain.config import ConfigError, PretrainConfig
    from pretrain.plan.plan import build_plan
    from pretrain.plan.report import format_plan, plan_json

    problems = unknown_keys(dict_cfg, PretrainConfig, skip=("hydra",))
    if problems:
        _config_error("; ".join(problems) + f" (`python -m {JOB} --help`)")
    cfg = OmegaConf.to_object(dict_cfg)
    world = world_size_of(cfg)
    try:
        manifests = validate_for_plan(cfg, world)
        plan = build_plan(cfg, world, manifests)
    except ConfigError as exc:
        hint = " (the planner's world size: cluster.num_gpus)" if "world size" in str(exc) else ""
        _config_error(f"{exc}{hint}")
    if manifests is None:
        plan.warnings.insert(
            0,
            f"data.paths={list(cfg.data.paths)} not prepared (no "
            "manifest.json): the token budget is not checked",
        )
    print(format_plan(plan), flush=True)
    print(json.dumps(plan_json(plan), sort_keys=False), flush=True)
    if not plan.fits:
        raise TaskExit(EXIT_DOES_NOT_FIT, "does not fit")


def main() -> None:
    """Entry point: `--help` is ours; everything else goes through Hydra."""
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(plan_help())
        return
    from pretrain.config import PretrainConfig, register_configs

    register_configs()
    run_app(_task, "pretrain", CONFIG_PATH, job=JOB, schema=PretrainConfig)


if __name__ == "__main__":
    main()
