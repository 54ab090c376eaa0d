"""The planner's shared types: a layout and each part of a plan (one owner per module).

Every byte figure is for the most loaded rank unless its docstring says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Layout:
    """How the job is split (the planner's view of `parallel.*` + `train.*`)."""

    tp: int
    pp: int
    dp: int
    vpp: int | None = None
    sp: bool = False
    dist_opt: bool = False
    micro_batch: int = 1
    recompute: str = "none"
    """none | selective | full (train.activation_recompute)."""

    @property
    def world(self) -> int:
        """tp x pp x dp."""
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        """`TP 2 x PP 4 (VPP 2) x DP 8, SP, dist-opt, micro-batch 1, recompute selective`."""
        vpp = f" (VPP {self.vpp})" if self.vpp else ""
        flags = [f for f, on in (("SP", self.sp), ("dist-opt", self.dist_opt)) if on]
        tail = [f"micro-batch {self.micro_batch}", f"recompute {self.recompute}"]
        extra = ", ".join([*flags, *tail])
        return f"TP {self.tp} x PP {self.pp}{vpp} x DP {self.dp}, {extra}"


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator type."""

    name: str
    memory_bytes: int
    peak_tflops_bf16: float
    """Dense bf16/fp16 tensor-core peak, TFLOP/s (no sparsity)."""
    peak_tflops_fp32: float


@dataclass
class ParamCounts:
    """Parameters of the whole model and of each rank."""

    total: int
    """The whole model, each parameter once (a tied output layer is not counted again)."""
    per_rank: dict[tuple[int, int], int]
    """(pp_rank, tp_rank) -> parameters that rank holds (the last stage's copy of a tied
    embedding included: it is memory). DP replicas hold the same."""
    padded_vocab: int
    embedding: int
    """Word (+ position) embedding of the whole model."""
    output: int
    """Untied output layer (0 when tied)."""
    per_layer: int

    def max_per_rank(self) -> int:
        """The largest rank's parameter count."""
        return max(self.per_rank.values())


@dataclass
class MemoryEstimate:
    """Bytes per GPU on the most loaded rank, by part."""

    weights: int
    gradients: int
    optimizer: int
    """Optimizer states + fp32 main weights (bf16/fp16), divided by DP with the distributed
    optimizer."""
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        """Sum of the parts."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    def parts(self) -> dict[str, int]:
        """{part: bytes}, for the JSON line."""
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "overhead": self.overhead,
            "total": self.total,
        }


COMM_KINDS = (
    "tp_all_reduce",
    "tp_all_gather",
    "tp_reduce_scatter",
    "pp_send_recv",
    "dp_all_reduce",
    "dp_reduce_scatter",
    "dp_all_gather",
    "other",
)
"""Kinds of communication per step (bytes passed to torch.distributed by one rank)."""


@dataclass
class CommEstimate:
    """Communication of one training step on the busiest rank."""

    bytes_per_step: dict[str, int] = field(default_factory=dict)
    """kind (COMM_KINDS) -> bytes of the tensors this rank passes to collectives / p2p."""
    seconds: dict[str, float] = field(default_factory=dict)
    """kind -> time on the stated links (ring algorithm factors applied)."""
    exposed_s: float = 0.0
    """The part of `seconds` not hidden behind compute."""


@dataclass
class TimeEstimate:
    """Compute, step time, throughput and the cost of the configured run."""

    flops_per_step: float
    compute_s: float
    bubble_s: float
    exposed_comm_s: float
    step_time_s: float
    tokens_per_s: float
    steps: int
    wall_clock_s: float
    gpu_hours: float
    hardware_flops_per_step: float = 0.0
    """flops_per_step (model FLOPs, what MFU counts) plus the recompute's extra forward: what
    the GPUs execute and what compute_s is computed from."""


@dataclass
class BudgetEstimate:
    """The token budget against the data manifests."""

    tokens: int
    """Training tokens of the run (steps x global batch x seq length)."""
    epochs: dict[str, float] = field(default_factory=dict)
    """Data dir -> epochs over it (with the blend weights)."""
    warnings: list[str] = field(default_factory=list)
