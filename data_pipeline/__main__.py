"""`python -m data_pipeline [hydra overrides]`: the only module that imports Hydra."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data_pipeline.config import PrepareConfig, register_configs
from data_pipeline.errors import ConfigError, DataError, OutputError

register_configs()
_STATE = {"composed": False}


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare")
def main(dict_cfg: DictConfig) -> None:
    """Compose conf/prepare.yaml + overrides into a PrepareConfig and run the job."""
    _STATE["composed"] = True
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = OmegaConf.to_object(dict_cfg)
    assert isinstance(cfg, PrepareConfig)
    from data_pipeline.prepare import run_prepare

    try:
        if HydraConfig.get().runtime.choices.get("tokenizer") == "pretrained" and (
            cfg.tokenizer.model is None
        ):
            raise ConfigError("tokenizer=pretrained needs tokenizer.model=/path/to/tokenizer.model")
        run_prepare(cfg)
    except (ConfigError, DataError, OutputError) as e:
        logging.getLogger("data_pipeline").error("%s: %s", type(e).__name__, e)
        sys.exit(1 if isinstance(e, DataError) else 2)
    except KeyboardInterrupt:
        logging.getLogger("data_pipeline").error(
            "interrupted: no manifest.json was written, finished shards are kept; rerun the "
            "same command to resume"
        )
        sys.exit(130)


def cli() -> None:
    """main(), with Hydra's own override errors (unknown key, wrong type) exiting 2 like ours."""
    try:
        main()
    except SystemExit as e:
        if e.code == 1 and not _STATE["composed"]:
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    cli()
