"""Hydra configs of both jobs, shipped inside the installed package (`pretrain_pipeline_conf`).

`prepare.yaml` (+ `input/`, `tokenizer/`) is `python -m data_pipeline`'s primary config,
`pretrain.yaml` (+ `model/`, `parallel/`, `data/`, `optim/`, `train/`, `logging/`,
`checkpoint/`) is `python -m pretrain`'s. The typed schemas are the dataclasses in
`data_pipeline/config.py` and `pretrain/config.py`, registered in Hydra's ConfigStore by each
entry point. In a checkout this folder is `conf/`; installed (editable or wheel) it is the
package `pretrain_pipeline_conf`, which the entry points find with Hydra's `pkg://` search path,
so commands work from any working directory. `hydra_app` holds the strict-config plumbing
both entry points share.
"""

CONFIG_PATH = "pkg://pretrain_pipeline_conf"
"""Hydra `config_path` of both entry points."""
