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


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the parallel layout: the one source every module reads.

    Filled once from megatron's parallel_state by `init_distributed`; code below the entry
    points reads sizes and ranks from here, not from megatron's globals or the config.
    """

    rank: int
    """Global rank."""
    world_size: int
    """All processes (TP x PP x DP)."""
    local_rank: int
    """Rank on this node (its CUDA device index)."""
    device: torch.device
    """This rank's device (cuda:LOCAL_RANK or cpu)."""
    backend: str
    """torch.distributed backend: nccl or gloo."""
    tp_size: int = 1
    """Tensor-parallel size."""
    tp_rank: int = 0
    """Rank in the tensor-parallel group."""
    pp_size: int = 1
    """Pipeline-parallel stages."""
    pp_rank: int = 0
    """This rank's pipeline stage."""
    vpp_size: int | None = None
    """Virtual pipeline chunks per stage (None = not interleaved)."""
    dp_size: int = 1
    """Data-parallel replicas."""
    dp_rank: int = 0
    """Rank in the data-parallel group."""

    @property
    def is_rank0(self) -> bool:
        """Global rank 0 (writes run-dir files, logs)."""
        return self.rank == 0

    @property
    def last_rank(self) -> int:
        """Global last rank: the last pipeline stage of the last replica (holds the loss)."""
        return self.world_size - 1

    def layout(self) -> dict[str, int | None]:
        """The parallel sizes, as recorded in checkpoint meta.json."""
        return {
            "world_size": self.world_size,
            "tensor_model_parallel_size": self.tp_size,
            "pipeline_model_parallel_size": self.pp_size,
            "virtual_pipeline_model_parallel_size": self.vpp_size,
            "data_parallel_size": self.dp_size,
        }

    def layout_str(self) -> str:
        """e.g. `TP2xPP1xDP1` for log lines."""
        return f"TP{self.tp_size}xPP{self.pp_size}xDP{self.dp_size}"


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 for a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    """RANK set by torchrun (0 for a plain process); usable before any process group exists."""
    return int(os.environ.get("RANK", "0"))


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
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        vpp_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        dp_size=parallel_state.get_data_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
    )


def teardown() -> None:
    """Destroy megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """torch.distributed barrier (no-op without a process group)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def global_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
