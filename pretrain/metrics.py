"""Run output on rank 0: console lines, metrics.jsonl, Weights & Biases; throughput and MFU."""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from pretrain.config import LoggingConfig, PretrainConfig
from pretrain.state import TrainState

log = logging.getLogger("pretrain")

# Dense bf16 peak TFLOP/s per device (no sparsity), from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,
}


def peak_tflops(logging_cfg: LoggingConfig) -> float | None:
    """Peak TFLOP/s of one device: the config's, else the known-GPU table, else None (CPU)."""
    if logging_cfg.peak_tflops:
        return logging_cfg.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    for key, value in PEAK_TFLOPS.items():
        if key in name.replace("NVIDIA ", "").split()[0:2] or key in name:
            return value
    return None


def memory_gib() -> float:
    """Peak allocated GPU memory (GPU) or resident set size (CPU) of this process, GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class RunLogger(Protocol):
    """What the training loop logs through (rank 0: MetricsLogger, elsewhere NullLogger)."""

    def log(self, record: dict[str, Any]) -> None:
        """One metrics row (a step, or an evaluation)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of the run."""

    def finish(self) -> None:
        """Close files and services."""


class MetricsLogger:
    """Writes one JSON object per logged step; prints a console line; mirrors to W&B.

    Only rank 0 creates one (`build_logger` returns a `NullLogger` elsewhere).
    """

    def __init__(self, cfg: PretrainConfig, run_dir: Path, state: TrainState) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if state.step == 0 and self.path.exists():
            self.path.unlink()  # a fresh run (not a resume) starts a fresh metrics file
        self._file = self.path.open("a", encoding="utf-8")
        self.wandb = _init_wandb(cfg, run_dir, state)

    def log(self, record: dict[str, Any]) -> None:
        """Append a record (rank 0)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if "loss" in record:
            log.info(_console_line(record))
        if record.get("valid_loss") is not None:
            log.info(
                "step %d | valid loss %.4f | valid ppl %.2f",
                record["step"],
                record["valid_loss"],
                record["valid_ppl"],
            )

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (W&B summary)."""
        if self.wandb is not None:
            for key, value in values.items():
                self.wandb.summary[key] = value

    def finish(self) -> None:
        """Close files and the W&B run."""
        self._file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class NullLogger:
    """Logger for ranks other than 0: does nothing."""

    def log(self, record: dict[str, Any]) -> None:
        return None

    def summary(self, values: dict[str, Any]) -> None:
        return None

    def finish(self) -> None:
        return None


def build_logger(cfg: PretrainConfig, run_dir: Path, state: TrainState, rank: int) -> RunLogger:
    """MetricsLogger on global rank 0, NullLogger elsewhere."""
    return MetricsLogger(cfg, run_dir, state) if rank == 0 else NullLogger()


def _init_wandb(cfg: PretrainConfig, run_dir: Path, state: TrainState) -> Any:
    wb = cfg.logging.wandb
    if wb.mode == "disabled":
        return None
    import wandb

    if state.wandb_run_id is None:
        state.wandb_run_id = uuid.uuid4().hex[:8]
    return wandb.init(
        project=wb.project,
        entity=wb.entity,
        name=cfg.run.name,
        id=state.wandb_run_id,
        resume="allow",
        dir=str(run_dir),
        mode=wb.mode,
        tags=list(wb.tags),
        config=asdict(cfg),
        settings=wandb.Settings(silent=True, console="off"),
    )


def _console_line(r: dict[str, Any]) -> str:
    parts = [
        f"step {r['step']}/{r['max_steps']}",
        f"loss {_fmt(r['loss'])}",
        f"lr {r['lr']:.3e}",
        f"grad_norm {_fmt(r['grad_norm'])}",
        f"tok/s {r['tokens_per_s']:.0f}",
        f"TFLOP/s/dev {r['tflops_per_device']:.3g}",
    ]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    parts.append(
        f"time data/fwd-bwd/opt {1000 * r['data_s']:.0f}/{1000 * r['fwd_bwd_s']:.0f}/"
        f"{1000 * r['optim_s']:.0f} ms"
    )
    parts.append(f"mem {r['mem_gib']:.2f} GiB")
    if r.get("skipped"):
        parts.append("SKIPPED" + (" (fp16 overflow)" if r.get("overflow") else " (non-finite)"))
    return " | ".join(parts)


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite in JSON."""
    return math.exp(min(loss, 80.0))
