"""Compose and validate a training config once, for a given world size; write it to a file.

    python -m pretrain.launch.resolve --world-size 16 [--out FILE | --check] [overrides...]

Prints two lines: the run dir, then the resolved-config file (default
`${run.dir}/.launch/resolved-<SLURM_JOB_ID or pid>.yaml`). `--check` validates only and writes
nothing: `launch/sbatch_pretrain.sh` runs it on the login node so that a bad layout fails in
seconds instead of after the queue. Exit 2 with one line naming the key on a config error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError


def compose_config(overrides: list[str]) -> Any:
    """The composed `pretrain` config (Hydra's compose API), without the `hydra` node."""
    from hydra import compose, initialize_config_module

    from pretrain.config import PretrainConfig, register_configs
    from pretrain_pipeline_conf import CONFIG_PATH
    from pretrain_pipeline_conf.hydra_app import override_key_problems

    problems = override_key_problems(overrides, PretrainConfig, skip=("hydra",))
    if problems:
        raise ConfigError("; ".join(problems))
    register_configs()
    module = CONFIG_PATH.removeprefix("pkg://")
    try:
        with initialize_config_module(config_module=module, version_base="1.3"):
            return compose(config_name="pretrain", overrides=list(overrides))
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors are config errors
        raise ConfigError(f"{type(exc).__name__}: {exc}") from None


def check_config(dict_cfg: Any, world_size: int, warn_prefix: str = "pretrain") -> Any:
    """The PretrainConfig of a composed `dict_cfg` after the checks `python -m pretrain` makes
    before any process group: unknown keys, `validate` for `world_size`, and the planner's
    preflight (its warnings to stderr, prefixed). ConfigError on a bad config."""
    from omegaconf import OmegaConf

    from pretrain.config import PretrainConfig
    from pretrain.plan.preflight import preflight
    from pretrain.validate import validate
    from pretrain_pipeline_conf.hydra_app import unknown_keys

    problems = unknown_keys(dict_cfg, PretrainConfig, skip=("hydra",))
    if problems:
        raise ConfigError("; ".join(problems))
    cfg = OmegaConf.to_object(dict_cfg)
    manifests = validate(cfg, world_size=world_size)
    for warning in preflight(cfg, world_size, manifests=manifests):
        print(f"{warn_prefix}: warning: {warning}", file=sys.stderr, flush=True)
    return cfg


def resolve(overrides: list[str], world_size: int) -> tuple[Any, Any]:
    """(DictConfig, PretrainConfig) after the same checks `python -m pretrain` makes."""
    dict_cfg = compose_config(overrides)
    return dict_cfg, check_config(dict_cfg, world_size)


def default_out(run_dir: str) -> Path:
    """`${run.dir}/.launch/resolved-<job id or pid>.yaml`."""
    tag = os.environ.get("SLURM_JOB_ID") or str(os.getpid())
    return Path(run_dir) / ".launch" / f"resolved-{tag}.yaml"


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.launch.resolve", description=__doc__)
    parser.add_argument("--world-size", type=int, default=1, help="nodes x processes per node")
    parser.add_argument("--out", default=None, help="resolved-config file to write")
    parser.add_argument("--check", action="store_true", help="validate only, write nothing")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for python -m pretrain")
    args = parser.parse_args(argv)
    from pretrain.launch.resolved import write_resolved

    try:
        if args.world_size < 1:
            raise ConfigError(f"--world-size {args.world_size}: must be >= 1")
        dict_cfg, cfg = resolve(args.overrides, args.world_size)
    except ConfigError as exc:
        print(f"pretrain: config error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(cfg.run.dir)
    if not args.check:
        out = Path(args.out) if args.out else default_out(cfg.run.dir)
        print(write_resolved(out, dict_cfg, args.overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
