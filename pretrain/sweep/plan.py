"""A multirun job's sweep point: its name and its run dir, set into the job's config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError, TrainConfig
from pretrain.sweep.points import override_key, point_name, swept_keys, user_run_dir


@dataclass
class SweepPoint:
    """One point of a sweep."""

    name: str
    """`key=value,...` of the swept keys (the run dir's name)."""
    run_dir: str
    """Where the point trains: `${sweep.dir}/<name>` unless run.dir itself is swept."""
    sweep_dir: str
    """The sweep's directory (`sweep.dir`)."""
    overrides: list[str] = field(default_factory=list)
    """This job's overrides (fixed and swept)."""


def cli_overrides(argv: Iterable[str]) -> list[str]:
    """The `key=value` overrides of a command line (flags like `-m` dropped)."""
    return [a for a in argv if not a.startswith("-") and "=" in a]


def plan_point(dict_cfg: Any, job_overrides: list[str], swept: list[str]) -> SweepPoint:
    """This job's point; sets `run.dir` (and `run.name`, unless given) in `dict_cfg`.

    A run.dir given once for the whole sweep is refused: every point would train (and
    resume) in the same directory.
    """
    from omegaconf import read_write

    name = point_name(job_overrides, swept)
    given_dir = user_run_dir(job_overrides)
    if given_dir is not None and swept and "run.dir" not in swept:
        raise ConfigError(
            f"run.dir={given_dir} is the same for every sweep point, so each point would "
            "resume the previous one's checkpoint: drop run.dir (each point trains in "
            "${sweep.dir}/<point>; set sweep.dir= or sweep.name= to move the sweep)"
        )
    sweep_dir = str(dict_cfg.sweep.dir)
    run_dir = given_dir if given_dir is not None else str(Path(sweep_dir) / name)
    given_name = any(override_key(o) == "run.name" for o in job_overrides)
    with read_write(dict_cfg):
        dict_cfg.run.dir = run_dir
        if not given_name:
            dict_cfg.run.name = f"{dict_cfg.sweep.name}/{name}"
    return SweepPoint(name, run_dir, sweep_dir, list(job_overrides))


def point_for_job(
    dict_cfg: Any, argv: list[str], sweeper_params: Mapping[str, Any] | None = None
) -> SweepPoint | None:
    """In a multirun job (Hydra's basic launcher): its point; None for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    params = sweeper_params if sweeper_params is not None else hydra_cfg.sweeper.get("params")
    swept = swept_keys(cli_overrides(argv), params)
    return plan_point(dict_cfg, list(hydra_cfg.overrides.task), swept)


def steps_of(train: TrainConfig) -> int:
    """The run length `train.*` asks for (max_steps, or what the token budget gives)."""
    return train.steps_for(train.global_batch_size * train.seq_length)


def reaches_max_steps(stop_at_step: int | None, steps: int | None) -> bool:
    """False when train.stop_at_step ends the run before max_steps (the point is `stopped`)."""
    return stop_at_step is None or steps is None or stop_at_step >= steps


def max_steps_of(dict_cfg: Any) -> int | None:
    """The run length of a composed config (None if the config does not convert)."""
    from omegaconf import OmegaConf

    try:
        return steps_of(OmegaConf.to_object(dict_cfg).train)
    except Exception:  # noqa: BLE001 - a bad config fails later, with its own message
        return None
