"""The preflight planner: `python -m pretrain.plan [training overrides] cluster.num_gpus=N
cluster.gpu=h100` predicts parameters, memory, communication, step time and the token budget of
a config on a cluster, without a GPU (docs/planner.md).

Modules: `types` (the shared dataclasses), `hardware` (GPU table), `layout`, `params` (exact
per-rank counts), `state_memory` + `memory`, `comm`, `timing`, `search` (a layout that fits),
`budget` (epochs over the data), `plan` (`build_plan`), `report` (table + JSON), `preflight`
(the check training and the launchers run). Importing this package imports none of them.
"""
