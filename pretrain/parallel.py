"""Process groups: torch.distributed + megatron parallel_state, seeds, teardown.

gloo on CPU (with the `pretrain.compat` patches), nccl on GPU. Works under torchrun (RANK,
WORLD_SIZE, MASTER_ADDR/PORT from the environment) and as a single plain process (an in-process
store: no TCP port).

Every collective gives up after `parallel.timeout_minutes` (torch's default process group and
megatron's groups alike), so a rank that stops responding without dying does not hold the
others for torch's 30 minutes. With gloo the waiting ranks get a RuntimeError ("Timed out
waiting ... ms"): `CollectiveTimeout` says which collective, where and what to check, and the
entry point exits with EXIT_COLLECTIVE_TIMEOUT. With nccl, torch's NCCL watchdog ends the
process itself after the same timeout, with its own message naming the operation.

A rank that dies (killed, crashed, its node or torchrun agent gone) closes its connections:
the others' collectives fail at once ("Connection reset by peer"); `is_peer_lost` tells that
apart and `PeerLost` words it, and the entry point exits with EXIT_PEER_LOST.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pretrain import compat
from pretrain.config import ConfigError, ParallelConfig

log = logging.getLogger(__name__)

EXIT_COLLECTIVE_TIMEOUT = 69
"""Exit code of a rank whose collective timed out (BSD EX_UNAVAILABLE: a peer is unavailable)."""

EXIT_PEER_LOST = 71
"""Exit code of a rank whose peer died mid-collective (its connection closed or reset)."""


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
    """Return the data-parallel size, or raise ConfigError if TP x PP does not divide world
    (or parallel.timeout_minutes is not a positive number of minutes)."""
    minutes = parallel_cfg.timeout_minutes
    if not minutes > 0:
        raise ConfigError(
            f"parallel.timeout_minutes={minutes} must be > 0 (minutes, fractions allowed), "
            "e.g. parallel.timeout_minutes=10"
        )
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


def _setup_env_for_single_process() -> bool:
    """Fill in RANK/WORLD_SIZE/LOCAL_RANK for a plain `python -m pretrain` (no launcher).

    Returns True when this is such a single process: it then needs no TCP rendezvous at all
    (an in-process store, see `_init_process_group`), so no port is picked, which another
    process could take between picking and binding it (EADDRINUSE).
    """
    launched = "MASTER_PORT" in os.environ  # torchrun / our launchers always set it
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    return not launched and os.environ["WORLD_SIZE"] == "1"


def _init_process_group(backend: str, timeout_minutes: float, single: bool) -> None:
    """The default process group: env:// rendezvous, or an in-process HashStore for a single
    plain process (world size 1; megatron's sub-groups use the same store)."""
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if single:
        torch.distributed.init_process_group(
            backend=backend,
            store=torch.distributed.HashStore(),
            rank=0,
            world_size=1,
            timeout=timeout,
        )
    else:
        torch.distributed.init_process_group(backend=backend, timeout=timeout)


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def init_distributed(
    parallel_cfg: ParallelConfig, seed: int = 1234, timeout_minutes: float | None = None
) -> DistInfo:
    """Start torch.distributed and megatron parallel_state; seed all RNGs.

    Applies the CPU compatibility layer first when CUDA is unavailable. Collectives time out
    after `timeout_minutes` (None = parallel.timeout_minutes).
    """
    from megatron.core import parallel_state

    if timeout_minutes is None:
        timeout_minutes = parallel_cfg.timeout_minutes
    compat.apply()
    single = _setup_env_for_single_process()
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
        _init_process_group(backend, timeout_minutes, single)
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


_TIMEOUT_PATTERN = re.compile(r"timed out|timeout", re.IGNORECASE)
_BACKEND_PATTERN = re.compile(r"gloo|nccl|c10d", re.IGNORECASE)


def is_collective_timeout(exc: BaseException) -> bool:
    """Whether `exc` is torch.distributed giving up on a collective or store wait.

    gloo raises a plain RuntimeError ("[.../gloo/transport/...] Timed out waiting 12000ms for
    recv operation to complete"); the store a DistStoreError (a DistError).
    """
    if not isinstance(exc, RuntimeError) or not _TIMEOUT_PATTERN.search(str(exc)):
        return False
    return isinstance(exc, torch.distributed.DistError) or bool(_BACKEND_PATTERN.search(str(exc)))


def _frame(frame: traceback.FrameSummary) -> str:
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def _origin(exc: BaseException) -> tuple[str, str]:
    """(the torch.distributed call that waited, the innermost megatron and pretrain frames)."""
    frames = traceback.extract_tb(exc.__traceback__)

    def innermost(part: str) -> list[traceback.FrameSummary]:
        found = [f for f in frames if part in f.filename.replace(os.sep, "/")]
        return found[-1:]

    c10d = [f.name for f in frames if f.filename.endswith("distributed_c10d.py")]
    public = [name for name in c10d if not name.startswith("_")]
    op = (public or c10d or ["a collective"])[-1]
    chain = innermost("/megatron/") + innermost("/pretrain/")
    return op, ", called from ".join(_frame(f) for f in chain) or "?"


def _timeout_cause(op: str) -> str:
    if op == "init_process_group":  # the ranks of another node never arrived
        return (
            "not every rank joined the process group: a trainer on another node failed before "
            "joining (e.g. a config error there, such as a data path missing on that node: see "
            "that node's output) or is stuck starting"
        )
    return (
        "another rank stopped responding without exiting (stopped, e.g. SIGSTOP or a debugger; "
        "hung in I/O such as a slow file system or checkpoint save; or stuck on a failed device "
        "or network link)"
    )


class CollectiveTimeout(RuntimeError):
    """A collective waited longer than parallel.timeout_minutes: another rank stopped answering."""

    def __init__(self, exc: BaseException, during: str, minutes: float) -> None:
        op, place = _origin(exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        super().__init__(
            f"rank {global_rank()}: {op} timed out after parallel.timeout_minutes={minutes:g} "
            f"during {during} ({place}): {_timeout_cause(op)}. Check the other "
            "ranks' logs and processes (`py-spy dump --pid PID`), the nodes' health (dmesg, "
            "nvidia-smi) and the network; raise parallel.timeout_minutes only if a legitimately "
            f"slow operation needs longer. torch said: {first_line}"
        )


_PEER_LOST_PATTERN = re.compile(
    r"connection (?:reset|closed) by peer|broken pipe|connection refused|socket closed"
    r"|failed to recv, got 0 bytes|remote process exit|ncclRemoteError|communicator was aborted",
    re.IGNORECASE,
)


def is_peer_lost(exc: BaseException) -> bool:
    """Whether `exc` is torch.distributed failing because another rank's process went away.

    gloo raises a plain RuntimeError ("[.../gloo/transport/tcp/pair.cc:537] Read error
    [127.0.0.1]:20153: Connection reset by peer"); NCCL a DistBackendError ("remote process
    exited or there was a network error"); the store a DistNetworkError. A timeout is not a lost
    peer (`is_collective_timeout`).
    """
    if not isinstance(exc, RuntimeError) or is_collective_timeout(exc):
        return False
    text = str(exc)
    if not _PEER_LOST_PATTERN.search(text):
        return False
    return isinstance(exc, torch.distributed.DistError) or bool(_BACKEND_PATTERN.search(text))


def _short_message(exc: BaseException, limit: int = 160) -> str:
    """torch's first line without its source-path prefix and boilerplate advice."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^(?:\[[^\]]*\.(?:cc|cpp|h)[^\]]*\]\s*)+", "", lines[0] if lines else "")
    text = text.split(" This is typically caused by")[0].strip().rstrip(".") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _step_in_traceback(exc: BaseException) -> int | None:
    """The training step (`ctx.state.step`) held by the innermost frame that has a `ctx`."""
    step = None
    tb = exc.__traceback__
    while tb is not None:
        state = getattr(tb.tb_frame.f_locals.get("ctx"), "state", None)
        if isinstance(getattr(state, "step", None), int):
            step = state.step
        tb = tb.tb_next
    return step


_PHASES = (
    ("setup", "setup"),
    ("load_at_start", "setup (checkpoint load)"),
    ("evaluate", "evaluation"),
    ("maybe_save", "a checkpoint save"),
    ("finalize", "the final checkpoint save"),
    ("generate", "the text sample"),
)


def peer_lost_during(exc: BaseException) -> str:
    """Where the run was when the peer went away, e.g. `step 12` or `setup`."""
    names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
    step = _step_in_traceback(exc)
    for name, phase in reversed(_PHASES):
        if name in names:
            return phase if step is None or phase.startswith("setup") else f"{phase} at step {step}"
    if step is not None:
        return f"step {step + 1}"
    return "training"


class PeerLost(RuntimeError):
    """A collective failed because another rank's process died (its connection closed)."""

    def __init__(self, exc: BaseException, checkpoint: Path | None) -> None:
        saved = str(checkpoint) if checkpoint is not None else "none"
        super().__init__(
            f"lost contact with another rank during {peer_lost_during(exc)} "
            f"({_short_message(exc)}): a node or process died or was killed; the last saved "
            f"checkpoint ({saved}) is kept; rerun the same command to resume"
        )
