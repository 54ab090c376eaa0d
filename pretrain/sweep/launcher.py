"""`hydra/launcher=submitit_local|submitit_slurm`: one submitit job per sweep point.

On the submitting host, for every point: compose its config (as Hydra's own submitit launcher
does on the node), set its run dir, validate it with the job's world size (nodes x processes
per node) and write it as a resolved-config file into the run dir. Points with a bad config
are reported and not queued; finished points are skipped; the rest are submitted as one job
array whose tasks (one per node) run `pretrain.sweep.job.PointJob`. Then wait, print the
summary, exit 0 / 1 / 2 (`pretrain.sweep.outcome`).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError
from pretrain.sweep.outcome import PointOutcome, summarize
from pretrain.sweep.plan import (
    SweepPoint,
    cli_overrides,
    plan_point,
    reaches_max_steps,
    steps_of,
)
from pretrain.sweep.points import (
    PointRecord,
    is_finished,
    point_name,
    short_error,
    swept_keys,
    write_point,
)
from pretrain_pipeline_conf.hydra_app import TaskExit

RESOLVED_NAME = ".launch/resolved.yaml"
"""The point's resolved config, inside its run dir."""
_INIT_KEYS = ("submitit_folder", "max_num_timeout")
_OURS = ("tasks_per_node",)


@dataclass
class QueuedPoint:
    """A point ready to submit."""

    point: SweepPoint
    config_file: str
    to_the_end: bool


def processes_per_node(params: dict[str, Any]) -> int:
    """Trainer processes per node: gpus_per_node if set, else tasks_per_node."""
    gpus, tasks = params.get("gpus_per_node"), params.get("tasks_per_node") or 1
    if gpus and tasks > 1 and tasks != gpus:
        raise ConfigError(
            f"hydra.launcher.tasks_per_node={tasks} and gpus_per_node={gpus} differ: each node "
            "runs one trainer process per GPU; set only gpus_per_node"
        )
    return int(gpus or tasks)


def _task_config(sweep_config: Any) -> Any:
    from omegaconf import open_dict, read_write

    task_cfg = copy.deepcopy(sweep_config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _validated(point: SweepPoint, sweep_config: Any, world: int) -> QueuedPoint | None:
    """Validate the point's config with the job's world size; write its resolved file.

    None when the point finished before. ConfigError when the config is bad.
    """
    from pretrain.launch.resolve import check_config
    from pretrain.launch.resolved import write_resolved

    task_cfg = _task_config(sweep_config)
    cfg = check_config(task_cfg, world, warn_prefix=f"sweep point {point.name}")
    steps = steps_of(cfg.train)
    if is_finished(point.run_dir, steps):
        return None
    config_file = write_resolved(Path(point.run_dir) / RESOLVED_NAME, task_cfg, point.overrides)
    write_point(point.run_dir, PointRecord(point.name, "queued", point.overrides, steps))
    to_the_end = reaches_max_steps(cfg.train.stop_at_step, steps)
    return QueuedPoint(point, str(config_file), to_the_end)


def _prepare(
    loader: Any, config: Any, overrides: list[str], swept: list[str], world: int
) -> tuple[QueuedPoint | None, PointOutcome | None]:
    """One job's overrides -> (point to queue, None) or (None, outcome: skipped or failed)."""
    from omegaconf.errors import OmegaConfBaseException

    fallback = point_name(overrides, swept)
    try:
        sweep_config = loader.load_sweep_config(config, list(overrides))
        point = plan_point(sweep_config, list(overrides), swept)
    except (ConfigError, OmegaConfBaseException, ValueError) as exc:  # Hydra's own errors too
        return None, _rejected(fallback, "", "", str(exc))
    try:
        queued = _validated(point, sweep_config, world)
    except (ConfigError, OmegaConfBaseException, ValueError) as exc:
        write_point(
            point.run_dir,
            PointRecord(point.name, "failed", point.overrides, exit_code=2, error=str(exc)),
        )
        return None, _rejected(point.name, point.run_dir, point.sweep_dir, str(exc))
    if queued is None:
        print(f"sweep point {point.name} finished before ({point.run_dir}): skipped", flush=True)
        return None, PointOutcome(point.name, point.run_dir, "skipped", sweep_dir=point.sweep_dir)
    return queued, None


def _rejected(name: str, run_dir: str, sweep_dir: str, message: str) -> PointOutcome:
    print(f"sweep point {name}: config error: {message} (not queued)", file=sys.stderr, flush=True)
    return PointOutcome(name, run_dir, "failed", 2, short_error(message), sweep_dir)


def _executor(kind: str, params: dict[str, Any], nproc: int) -> Any:
    import submitit

    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{kind}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=kind, **init)
    rest = {k: v for k, v in params.items() if k not in _INIT_KEYS and k not in _OURS}
    if rest.get("cpus_per_task") is None:
        rest["cpus_per_task"] = nproc
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "nodes", "name"}
    mapped = {k if k in base else f"{kind}_{k}": v for k, v in rest.items() if v is not None}
    executor.update_parameters(tasks_per_node=1, **mapped)
    return executor


def _plain(params: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in dict(params).items()
    }


def _collect(job: Any, queued: QueuedPoint) -> PointOutcome:
    p = queued.point
    try:
        result = job.results()[0]
    except Exception as exc:  # noqa: BLE001 - submitit's job failure: this point only
        error = short_error(str(exc))
        write_point(p.run_dir, PointRecord(p.name, "failed", p.overrides, exit_code=1, error=error))
        return PointOutcome(p.name, p.run_dir, "failed", 1, error, p.sweep_dir)
    status, code = result.get("status", "failed"), int(result.get("exit_code", 1))
    return PointOutcome(p.name, p.run_dir, status, code, result.get("error", ""), p.sweep_dir)


def _job_return(overrides: list[str], outcome: PointOutcome, task_name: str) -> Any:
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(overrides=list(overrides), working_dir=outcome.run_dir, task_name=task_name)
    ret.status = JobStatus.COMPLETED
    ret._return_value = outcome
    return ret


def _plan_all(
    launcher: Any, job_overrides: Any, world: int
) -> tuple[list[QueuedPoint], list[PointOutcome]]:
    config = launcher.config
    swept = swept_keys(cli_overrides(sys.argv[1:]), config.hydra.sweeper.get("params"))
    queued, outcomes = [], []
    loader = launcher.hydra_context.config_loader
    for overrides in job_overrides:
        ready, outcome = _prepare(loader, config, list(overrides), swept, world)
        if ready is not None:
            queued.append(ready)
        if outcome is not None:
            outcomes.append(outcome)
    return queued, outcomes


def launch_points(launcher: Any, job_overrides: Any, initial_job_idx: int) -> list[Any]:
    """The plugin's `launch`: plan and validate every point, submit, wait, summarize."""
    params = _plain(launcher.params)
    kind = launcher.executor
    try:
        nproc = processes_per_node(params)
        if kind == "local" and int(params.get("nodes") or 1) != 1:
            raise ConfigError("hydra.launcher.nodes must be 1 with submitit_local (one machine)")
    except ConfigError as exc:
        print(f"pretrain: config error: {exc}", file=sys.stderr)
        raise TaskExit(2, str(exc)) from None
    world = int(params.get("nodes") or 1) * nproc
    sweep_dir = str(launcher.config.hydra.sweep.dir)
    queued, outcomes = _plan_all(launcher, job_overrides, world)
    if queued:
        executor = _executor(kind, params, nproc)
        from pretrain.sweep.job import PointJob

        jobs = executor.map_array(
            PointJob(),
            [q.config_file for q in queued],
            [q.point.name for q in queued],
            [q.point.run_dir for q in queued],
            [nproc] * len(queued),
            [q.to_the_end for q in queued],
        )
        for job, q in zip(jobs, queued, strict=True):
            print(f"sweep point {q.point.name}: job {job.job_id} -> {q.point.run_dir}", flush=True)
        outcomes += [_collect(job, q) for job, q in zip(jobs, queued, strict=True)]
    code = summarize(outcomes, sweep_dir)
    if code:
        raise TaskExit(code, "some sweep points failed")
    task_name = str(launcher.config.hydra.job.name)
    return [_job_return([], o, task_name) for o in outcomes]
