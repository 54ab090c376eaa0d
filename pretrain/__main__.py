"""`torchrun --nproc-per-node N -m pretrain [hydra overrides]` (or `python -m pretrain ...`).

Composes the Hydra config (`conf/pretrain.yaml`, shipped as `pretrain_pipeline_conf`), rejects
unknown keys (also `+key=value`), converts it to the typed `PretrainConfig` and validates it
before any process group starts: a `ConfigError` prints one clean line naming the key and exits
2 on every rank, so nothing hangs. Only then does rank 0 take run.dir's lock (`pretrain.run_lock`:
one training per run.dir) and, if it got it, write the run's `.hydra/` record and open its log
file in run.dir, so a rejected launch never overwrites a run's recorded config.
`--help` lists the training groups and every key with its description.

`-m` (Hydra multirun) trains each sweep point in its own run dir `${sweep.dir}/<point>`
(`pretrain.sweep`); `--resolved-config FILE` trains from a config composed and validated
elsewhere (`pretrain.launch`: the Slurm script and the sweep launchers), without Hydra.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.distributed.elastic.multiprocessing.errors import record

from pretrain.parallel import rank_from_env
from pretrain_pipeline_conf import CONFIG_PATH
from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR, TaskExit, run_app, unknown_keys

if TYPE_CHECKING:
    from pretrain.run_lock import RunLock
    from pretrain.sweep.outcome import PointOutcome

EXIT_INTERRUPTED = 130
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"

_QUIET_WARNINGS = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "Cannot save the BlendedDataset indexes",
    "full scope is deprecated",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "is deprecated. Please use",
    "is deprecated and will be removed",
    "Please use DTensor instead",
    "is validated against ConfigStore schema with the same name",  # our hydra/launcher presets
)


def _quiet() -> None:
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def _configure_logging(level: str) -> None:
    """Rank 0: INFO lines on stdout; other ranks: warnings only."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format=LOG_FORMAT, force=True)
    if rank_from_env() == 0:
        logging.getLogger("pretrain").setLevel(level)
    else:
        logging.getLogger("pretrain").setLevel(logging.WARNING)


def _config_error(message: str) -> None:
    print(f"pretrain: config error: {message}", file=sys.stderr, flush=True)
    raise TaskExit(EXIT_CONFIG_ERROR, message)


def _record_run(dict_cfg: Any, run_dir: Path, overrides: list[str]) -> None:
    """Rank 0, after validation: `.hydra/{config,overrides,hydra}.yaml` and `pretrain.log`
    (hydra.yaml only when Hydra composed the config in this process)."""
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(dict_cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), hydra_dir / "overrides.yaml")
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        OmegaConf.save(OmegaConf.create({"hydra": HydraConfig.get()}), hydra_dir / "hydra.yaml")
    handler = logging.FileHandler(run_dir / "pretrain.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def _run_config(dict_cfg: Any, overrides: list[str]) -> None:
    """Check keys, validate (before any process group), lock run.dir, record, train."""
    from omegaconf import OmegaConf

    from pretrain.config import ConfigError, PretrainConfig
    from pretrain.parallel import world_size_from_env
    from pretrain.plan.preflight import preflight
    from pretrain.validate import validate

    problems = unknown_keys(dict_cfg, PretrainConfig, skip=("hydra",))
    if problems:
        _config_error("; ".join(problems) + " (`python -m pretrain --help` lists every key)")
    cfg = OmegaConf.to_object(dict_cfg)
    _configure_logging(cfg.logging.level)
    try:
        manifests = validate(cfg)
        for warning in preflight(cfg, world_size_from_env(), manifests=manifests):
            if rank_from_env() == 0:
                logging.getLogger("pretrain").warning("%s", warning)
        lock = _lock_run_dir(cfg.run.dir)
    except ConfigError as exc:
        _config_error(str(exc))
    try:
        if lock is not None and lock.refusal is None:
            _record_run(dict_cfg, Path(cfg.run.dir), overrides)
        _train(cfg, manifests, lock)
    finally:
        if lock is not None:
            lock.release()


def _entry(dict_cfg: Any, outcomes: list[PointOutcome]) -> None:
    """Hydra's task: a single run, or one point of a multirun (basic launcher)."""
    from hydra.core.hydra_config import HydraConfig

    from pretrain.config import ConfigError
    from pretrain.sweep.local import check_single_process, run_local_point
    from pretrain.sweep.plan import max_steps_of, point_for_job, reaches_max_steps

    overrides = list(HydraConfig.get().overrides.task)
    try:
        point = point_for_job(dict_cfg, sys.argv[1:])
        if point is not None:
            check_single_process()
    except ConfigError as exc:
        _config_error(str(exc))
    if point is None:
        _run_config(dict_cfg, overrides)
        return
    steps = max_steps_of(dict_cfg)
    to_the_end = reaches_max_steps(dict_cfg.train.stop_at_step, steps)
    outcomes.append(
        run_local_point(point, steps, lambda: _run_config(dict_cfg, overrides), to_the_end)
    )
    _quiet()  # Hydra's next job logs again


def _run_resolved(path: str) -> None:
    """`python -m pretrain --resolved-config FILE` (the trainers of a launched job)."""
    from omegaconf import OmegaConf

    from pretrain.config import ConfigError, PretrainConfig
    from pretrain.launch.resolved import read_resolved

    try:
        config, overrides = read_resolved(path)
        problems = unknown_keys(config, PretrainConfig)
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems))
        dict_cfg = OmegaConf.merge(OmegaConf.structured(PretrainConfig), config)
    except ConfigError as exc:
        _config_error(str(exc))
    except Exception as exc:  # noqa: BLE001 - a wrongly typed value in the file
        _config_error(f"{path}: {exc}")
    _run_config(dict_cfg, overrides)


def _lock_run_dir(run_dir: str) -> RunLock | None:
    """Rank 0: take run.dir's lock (`pretrain.run_lock`) before writing anything into it.

    Refused: a single process exits 2 here; with several ranks rank 0 writes nothing and goes
    on to the process groups, where every rank learns the refusal and all exit 2 together.
    """
    from pretrain.parallel import world_size_from_env
    from pretrain.run_lock import RunLock

    if rank_from_env() != 0:
        return None
    lock = RunLock(run_dir).acquire()
    if lock.refusal is not None and world_size_from_env() == 1:
        _config_error(lock.refusal)
    return lock


def _train(cfg: Any, manifests: list[dict[str, Any]], lock: RunLock | None) -> None:
    from pretrain.checkpoint.layout import read_latest
    from pretrain.config import ConfigError
    from pretrain.parallel import (
        EXIT_COLLECTIVE_TIMEOUT,
        EXIT_PEER_LOST,
        CollectiveTimeout,
        PeerLost,
        is_peer_lost,
        teardown,
    )
    from pretrain.train import run

    try:
        code = run(cfg, manifests, lock)
    except ConfigError as exc:  # found while building (e.g. a split that gets no documents)
        print(f"pretrain: config error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG_ERROR
    except CollectiveTimeout as exc:
        print(f"pretrain: collective timeout: {exc}", file=sys.stderr, flush=True)
        code = EXIT_COLLECTIVE_TIMEOUT
    except RuntimeError as exc:  # another rank died: its connections closed (docs/multinode.md)
        if not is_peer_lost(exc):
            raise
        lost = PeerLost(exc, read_latest(Path(cfg.run.dir)))
        print(f"pretrain: {lost}", file=sys.stderr, flush=True)
        code = EXIT_PEER_LOST
    except KeyboardInterrupt:
        print(
            "pretrain: interrupted (Ctrl-C); the last saved checkpoint (if any) is kept",
            file=sys.stderr,
            flush=True,
        )
        code = EXIT_INTERRUPTED
    finally:
        teardown()
    if code:
        sys.exit(code)


@record
def main() -> None:
    """Entry point: `--help` is ours; everything else goes through Hydra."""
    from pretrain.lifeline import die_with_parent

    die_with_parent()  # under torchrun: never outlive its agent (docs/multinode.md)
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        from pretrain.help import pretrain_help

        print(pretrain_help())
        return
    from pretrain.config import PretrainConfig, register_configs
    from pretrain.launch.resolved import CONFIG_FLAG

    _quiet()
    if sys.argv[1:2] == [CONFIG_FLAG]:
        if len(sys.argv) != 3:
            _config_error(f"usage: python -m pretrain {CONFIG_FLAG} FILE (no other arguments)")
        _run_resolved(sys.argv[2])
        return
    register_configs()
    __import__("hydra_plugins.pretrain_launcher").pretrain_launcher.register()
    outcomes: list[PointOutcome] = []

    def task(dict_cfg: Any) -> None:
        _entry(dict_cfg, outcomes)

    run_app(task, "pretrain", CONFIG_PATH, job="pretrain", schema=PretrainConfig)
    if outcomes:
        from pretrain.sweep.outcome import summarize

        code = summarize(outcomes, outcomes[0].sweep_dir)
        if code:
            raise TaskExit(code, "some sweep points failed")


if __name__ == "__main__":
    main()
