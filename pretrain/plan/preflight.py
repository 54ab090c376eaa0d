"""The planner's memory check before a launch: training (`python -m pretrain`), the Slurm
resolve step (`python -m pretrain.launch.resolve`) and the sweep launchers call `preflight`
right after `validate`, before any process group starts or any job is queued.

`cluster.check`: `warn` (default) returns the warning, `error` raises it as a `ConfigError`
(exit 2), `off` skips the check. Without a GPU type (cluster.gpu=null and no visible CUDA
device, e.g. training on CPU or a login node) there is no memory to compare with: no warning.
"""

from __future__ import annotations

from typing import Any

from pretrain.config import ConfigError, PretrainConfig
from pretrain.plan.types import GpuSpec

GIB = 2**30


def _gpu_for(cfg: PretrainConfig, gpu: GpuSpec | None) -> GpuSpec | None:
    from pretrain.plan.hardware import detect_gpu, gpu_spec

    if gpu is not None:
        return gpu
    if cfg.cluster.gpu is not None:
        return gpu_spec(cfg.cluster.gpu)
    return detect_gpu()


def _manifests(cfg: PretrainConfig) -> list[dict[str, Any]] | None:
    """The data manifests when they can be read (for the exact vocabulary), else None."""
    from pretrain.data_checks import check_manifests

    try:
        return check_manifests(cfg.data, cfg.model, verify_files=False)
    except (ConfigError, OSError):
        return None


def plan_command(cfg: PretrainConfig, world_size: int, gpu: GpuSpec) -> str:
    """The `python -m pretrain.plan ...` line that shows the whole plan."""
    return (
        f"python -m pretrain.plan [your overrides] cluster.num_gpus={world_size} "
        f"cluster.gpu={gpu.name.lower()}"
    )


def preflight_message(cfg: PretrainConfig, world_size: int, plan: Any) -> str:
    """'the plan predicts X GiB per GPU > Y GiB on <gpu>: ...' for a plan that does not fit."""
    from pretrain.plan.plan import layout_overrides

    m = plan.memory
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in m.parts().items() if k != "total")
    text = (
        f"the plan predicts {m.total / GIB:.1f} GiB per GPU > {plan.gpu.memory_bytes / GIB:.1f} "
        f"GiB on {plan.gpu.name} ({plan.layout.describe()}; GiB: {parts}); "
        f"`{plan_command(cfg, world_size, plan.gpu)}` shows the plan"
    )
    if plan.suggestion is not None:
        text += " and suggests " + " ".join(layout_overrides(plan.suggestion, plan.layout))
    return text + " (cluster.check=off skips this check)"


def preflight(
    cfg: PretrainConfig,
    world_size: int,
    gpu: GpuSpec | None = None,
    manifests: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Warnings when the planner predicts that `cfg` does not fit on `world_size` GPUs.

    Args:
        cfg: a validated config.
        world_size: the launched world size.
        gpu: the GPU type; None: cluster.gpu, else the visible CUDA device, else no check.
        manifests: the data manifests (validate's return value) for the exact vocabulary;
            None reads them when present.

    Raises:
        ConfigError: with cluster.check=error, when it does not fit.
    """
    if cfg.cluster.check == "off":
        return []
    gpu = _gpu_for(cfg, gpu)
    if gpu is None:
        return []
    from pretrain.plan.plan import build_plan

    manifests = manifests or _manifests(cfg)
    if build_plan(cfg, world_size, manifests, search=False, gpu=gpu).fits:
        return []
    # only now search (it estimates many layouts) for the suggestion in the message
    plan = build_plan(cfg, world_size, manifests, search=True, gpu=gpu)
    message = preflight_message(cfg, world_size, plan)
    if cfg.cluster.check == "error":
        raise ConfigError(message)
    return [message]
