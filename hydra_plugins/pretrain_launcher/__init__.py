"""Hydra launcher plugins of pretrain-pipeline: `hydra/launcher=submitit_local|submitit_slurm`.

Hydra instantiates launchers only from the `hydra_plugins` namespace, and imports every module
here at start-up, so this stays a thin shell: the work is in `pretrain.sweep.launcher` (each
point composed and validated on the submitting host, then one submitit job per point running
one torchrun per node on the point's resolved config).
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.launcher import Launcher


class _PretrainSubmititLauncher(Launcher):
    executor = "abstract"

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> Any:
        from pretrain.sweep.launcher import launch_points

        return launch_points(self, job_overrides, initial_job_idx)


class PretrainSlurmLauncher(_PretrainSubmititLauncher):
    """`hydra/launcher=submitit_slurm`: one Slurm job per sweep point."""

    executor = "slurm"


class PretrainLocalLauncher(_PretrainSubmititLauncher):
    """`hydra/launcher=submitit_local`: one local process tree per sweep point."""

    executor = "local"


def register() -> None:
    """Register both launchers with Hydra explicitly (called by `python -m pretrain`): an
    editable install exposes this package through an import hook that Hydra's plugin scan
    (pkgutil) does not walk."""
    from hydra.core.plugins import Plugins

    for clazz in (PretrainSlurmLauncher, PretrainLocalLauncher):
        Plugins.instance().register(clazz)
