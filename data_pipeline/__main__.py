"""`python -m data_pipeline [hydra overrides]`: the only module that imports Hydra."""

from __future__ import annotations

import logging
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from data_pipeline.config import PrepareConfig, input_for_overrides, register_configs
from data_pipeline.errors import ConfigError, DataError, OutputError, exit_code
from pretrain_pipeline_conf import CONFIG_PATH
from pretrain_pipeline_conf.hydra_app import EXIT_CONFIG_ERROR, run_app, unknown_keys


def main(dict_cfg: DictConfig) -> None:
    """Compose conf/prepare.yaml + overrides into a PrepareConfig and run the job."""
    problems = unknown_keys(dict_cfg, PrepareConfig)
    if problems:  # e.g. `+input.textkey=x`, which Hydra adds without complaint
        print("data_pipeline: config error: " + "; ".join(problems), file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = OmegaConf.to_object(dict_cfg)
    assert isinstance(cfg, PrepareConfig)
    # `input.paths=[...]` alone means your files (input=files), not the embedded default corpus
    cfg.input = input_for_overrides(cfg.input, HydraConfig.get().overrides.task)
    from data_pipeline.prepare import run_prepare

    try:
        if HydraConfig.get().runtime.choices.get("tokenizer") == "pretrained" and (
            cfg.tokenizer.model is None
        ):
            raise ConfigError("tokenizer=pretrained needs tokenizer.model=/path/to/tokenizer.model")
        run_prepare(cfg)
    except (ConfigError, DataError, OutputError) as e:
        logging.getLogger("data_pipeline").error("%s: %s", type(e).__name__, e)
        sys.exit(exit_code(e))
    except KeyboardInterrupt:
        logging.getLogger("data_pipeline").error(
            "interrupted: no manifest.json was written, finished shards are kept; rerun the "
            "same command to resume"
        )
        sys.exit(130)


def cli() -> None:
    """Hydra entry point; every configuration error (also Hydra's own) exits 2."""
    register_configs()
    run_app(main, "prepare", CONFIG_PATH, job="data_pipeline", schema=PrepareConfig)


if __name__ == "__main__":
    cli()
