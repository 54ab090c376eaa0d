"""`torchrun --nproc-per-node N -m pretrain [hydra overrides]` (or `python -m pretrain ...`).

Composes the Hydra config (`conf/pretrain.yaml`, shipped as `pretrain_pipeline_conf`), rejects
unknown keys (also `+key=value`), converts it to the typed `PretrainConfig` and validates it
before any process group starts: a `ConfigError` prints one clean line naming the key and exits
2 on every rank, so nothing hangs. Only then does rank 0 take run.dir's lock (`pretrain.run_lock`:
one training per run.dir) and, if it got it, write the run's `.hydra/` record and open its log
file in run.dir, so a rejected launch never overwrites a run's recorded config.
`--help` lists the training groups and every key with its description.
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
from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR, run_app, unknown_keys

if TYPE_CHECKING:
    from pretrain.run_lock import RunLock

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
    sys.exit(EXIT_CONFIG_ERROR)


def _record_run(dict_cfg: Any, run_dir: Path) -> None:
    """Rank 0, after validation: `.hydra/{config,overrides,hydra}.yaml` and `pretrain.log`."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(dict_cfg, hydra_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), hydra_dir / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), hydra_dir / "hydra.yaml")
    handler = logging.FileHandler(run_dir / "pretrain.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def _entry(dict_cfg: Any) -> None:
    from omegaconf import OmegaConf

    from pretrain.config import ConfigError, PretrainConfig
    from pretrain.validate import validate

    problems = unknown_keys(dict_cfg, PretrainConfig, skip=("hydra",))
    if problems:
        _config_error("; ".join(problems) + " (`python -m pretrain --help` lists every key)")
    cfg = OmegaConf.to_object(dict_cfg)
    _configure_logging(cfg.logging.level)
    try:
        manifests = validate(cfg)
        lock = _lock_run_dir(cfg.run.dir)
    except ConfigError as exc:
        _config_error(str(exc))
    try:
        if lock is not None and lock.refusal is None:
            _record_run(dict_cfg, Path(cfg.run.dir))
        _train(cfg, manifests, lock)
    finally:
        if lock is not None:
            lock.release()


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
    from pretrain.config import ConfigError
    from pretrain.parallel import EXIT_COLLECTIVE_TIMEOUT, CollectiveTimeout, teardown
    from pretrain.train import run

    try:
        code = run(cfg, manifests, lock)
    except ConfigError as exc:  # found while building (e.g. a split that gets no documents)
        print(f"pretrain: config error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG_ERROR
    except CollectiveTimeout as exc:
        print(f"pretrain: collective timeout: {exc}", file=sys.stderr, flush=True)
        code = EXIT_COLLECTIVE_TIMEOUT
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
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        from pretrain.help import pretrain_help

        print(pretrain_help())
        return
    from pretrain.config import PretrainConfig, register_configs

    _quiet()
    register_configs()
    run_app(_entry, "pretrain", CONFIG_PATH, job="pretrain", schema=PretrainConfig)


if __name__ == "__main__":
    main()
