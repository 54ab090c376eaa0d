"""Process groups: torch.distributed + megatron parallel_state, seeds, teardown.

gloo on CPU (with the `pretrain.compat` patches), nccl on GPU. Works under torchrun (RANK,
WORLD_SIZE, MASTER_ADDR/PORT from the environment) and as a single plain process.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from pretrain import compat
from pretrain.config import ConfigError, ParallelConfig

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process sits in the parallel layout."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    dp_size: int
    dp_rank: int
    tp_rank: int
    pp_rank: int


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(parallel_cfg: ParallelConfig, world_size: int) -> int:
    """Return the data-parallel size, or raise ConfigError if TP x PP does not divide world."""
    mp = parallel_cfg.model_parallel_size()
    if world_size % mp != 0:
        raise ConfigError(
            f"world size {world_size} (torchrun --nproc-per-node x nodes) is not divisible by "
            f"parallel.tensor_model_parallel_size={parallel_cfg.tensor_model_parallel_size} x "
            f"parallel.pipeline_model_parallel_size={parallel_cfg.pipeline_model_parallel_size}"
            f" = {mp}; launch a multiple of {mp} processes or change the parallel sizes"
        )
    return world_size // mp


def _choose_backend(parallel_cfg: ParallelConfig) -> str:
    if parallel_cfg.backend != "auto":
        return parallel_cfg.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def _setup_env_for_single_process() -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_distributed(
    parallel_cfg: ParallelConfig, seed: int = 1234, timeout_minutes: int = 30
) -> DistInfo:
    """Start torch.distributed and megatron parallel_state; seed all RNGs.

    Applies the CPU compatibility layer first when CUDA is unavailable.
    """
    from megatron.core import parallel_state

    compat.apply()
    _setup_env_for_single_process()
    world_size = world_size_from_env()
    check_world_size(parallel_cfg, world_size)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = _choose_backend(parallel_cfg)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel_cfg.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    seed_everything(seed)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        backend=backend,
        dp_size=parallel_state.get_data_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
    )


def teardown() -> None:
    """Destroy megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_rank0() -> bool:
    """Global rank 0 (True without torch.distributed)."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def is_last_rank() -> bool:
    """Global last rank (last pipeline stage of the last DP replica): it holds the loss."""
    if not torch.distributed.is_initialized():
        return True
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1
