"""`torchrun --nproc-per-node N -m pretrain [hydra overrides]` (or `python -m pretrain ...`).

Composes the Hydra config (conf/pretrain.yaml), converts it to the typed `PretrainConfig`,
validates it before any process group starts (a `ConfigError` prints one clean line naming the
key and exits 2 on every rank, so nothing hangs), then trains. Rank 0 alone writes `.hydra/`
and the log file into run.dir; other ranks log warnings to stderr only.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from torch.distributed.elastic.multiprocessing.errors import record

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130

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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _multi_rank_hydra_overrides() -> None:
    """Rank > 0 writes no .hydra/ dir and no log file (every rank composes its own config)."""
    if _rank() > 0:
        sys.argv += [
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]


def _quiet() -> None:
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    logging.getLogger("megatron.core.datasets").setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def _configure_logging(level: str) -> None:
    if _rank() == 0:
        logging.getLogger("pretrain").setLevel(level)
    else:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("pretrain").setLevel(logging.WARNING)


def _entry(dict_cfg) -> None:  # type: ignore[no-untyped-def]
    from omegaconf import OmegaConf

    from pretrain.config import ConfigError
    from pretrain.validate import validate

    cfg = OmegaConf.to_object(dict_cfg)
    _configure_logging(cfg.logging.level)
    try:
        manifests = validate(cfg)
    except ConfigError as exc:
        print(f"pretrain: config error: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG_ERROR)
    from pretrain.parallel import teardown
    from pretrain.train import run

    try:
        code = run(cfg, manifests)
    except ConfigError as exc:  # found while building (e.g. a split that gets no documents)
        print(f"pretrain: config error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG_ERROR
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
    """Hydra entry point (config_path ../conf, config_name pretrain)."""
    import hydra

    from pretrain.config import register_configs

    _quiet()
    _multi_rank_hydra_overrides()
    register_configs()
    hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")(_entry)()


if __name__ == "__main__":
    main()
