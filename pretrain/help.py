"""`python -m pretrain --help`: the training groups and every key, with its default and meaning.

Defaults are those of the composed default config (`conf/pretrain.yaml` and its group presets),
descriptions are the attribute docstrings of the `pretrain.config` dataclasses.
"""

from __future__ import annotations

import dataclasses
import textwrap
from importlib import resources
from typing import Any

from pretrain.config import GROUP_SCHEMAS, PretrainConfig, register_configs
from pretrain_pipeline_conf.hydra_app import field_docs

EXAMPLES = (
    "python -m pretrain                                   # model=tiny on the demo data, 1 process",
    "torchrun --nproc-per-node 2 -m pretrain parallel=tp2 model=tiny 'data.paths=[DIR]'",
    "torchrun --nproc-per-node 8 -m pretrain model=llama-1b parallel=tp2 precision=bf16 \\",
    "    train=llama 'data.paths=[/data/web,/data/code]' 'data.weights=[0.7,0.3]' run.name=l1b",
    "python -m pretrain model=gpt2-125m train.max_steps=100 checkpoint.save_interval=50",
    "python -m pretrain --cfg job                         # print the composed config and exit",
)


def group_options(group: str) -> list[str]:
    """Preset names of one config group (its YAML files)."""
    folder = resources.files("pretrain_pipeline_conf").joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _default_config() -> dict[str, Any]:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_module("pretrain_pipeline_conf", version_base="1.3"):
        cfg = compose(config_name="pretrain")
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _key_lines(cls: type, values: dict[str, Any], prefix: str = "") -> list[str]:
    docs = field_docs(cls)
    lines = []
    for f in dataclasses.fields(cls):
        value = values.get(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            lines += _key_lines(type(default), value or {}, f"{prefix}{f.name}.")
            continue
        lines.append(f"  {prefix}{f.name}={'null' if value is None else value}")
        if docs.get(f.name):
            pad = " " * 6
            lines += textwrap.wrap(docs[f.name], 96, initial_indent=pad, subsequent_indent=pad)
    return lines


def pretrain_help() -> str:
    """The whole help text."""
    lines = [
        "torchrun --nproc-per-node N -m pretrain [group=option ...] [key=value ...]",
        "(or `python -m pretrain ...` for one process)",
        "",
        "GPT pretraining on megatron-core with TP/PP/VPP/SP/DP. Every key is documented in",
        "docs/configuration.md; unknown keys are errors. Exit status: 0 done, 2 configuration",
        "error, 75 preempted (checkpoint saved), 130 interrupted.",
        "",
        "Examples:",
        *(f"  {e}" for e in EXAMPLES),
        "",
        "Config groups (group=option):",
    ]
    lines += [f"  {group}: {', '.join(group_options(group))}" for group in GROUP_SCHEMAS]
    lines += [
        f"  sweep (with -m): {', '.join(group_options('sweep'))}",
        "  hydra/launcher (with -m): basic (default), submitit_local, submitit_slurm",
        "",
        "Sweeps (docs/sweeps.md): python -m pretrain -m optim.lr=1e-3,3e-3 ... trains each point",
        "in checkpoints/sweep/<point>; python -m pretrain.sweep_report SWEEP_DIR tabulates them.",
    ]
    lines += ["", "Keys (key=default):"]
    lines += _key_lines(PretrainConfig, _default_config())
    lines += [
        "",
        "Related commands: python -m pretrain.export_hf --help, python -m pretrain.import_hf "
        "--help, python -m pretrain.generate --help, python -m pretrain.caption --help (objective="
        "llava), python -m pretrain.report RUN_DIR "
        "[RUN_DIR ...], python -m pretrain.sweep_report SWEEP_DIR",
    ]
    return "\n".join(lines)
