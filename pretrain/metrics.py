"""Run output on rank 0: console lines, metrics.jsonl, W&B, TensorBoard; throughput and MFU.

metrics.jsonl holds one JSON row per logged step (an evaluation at that step, the final one
included, is merged into the step's row). On resume, rank 0 first rewrites it to the rows of
steps <= the resumed step, so steps replayed after a crash appear once. objective=mlm rows add
`accuracy`, `valid_accuracy` (masked-token accuracy) and `masked_tokens`; the console shows
both accuracies, the W&B / TensorBoard summary their last values (`final_accuracy`, ...).

W&B offline: wandb (0.2x-0.3x) writes one `offline-run-<time>-<id>/run-<id>.wandb` folder per
process and never reuses an existing one (`wandb.init` even adds a `-1` suffix to avoid it), so
a run resumed N times has N+1 folders, all with the run id kept in the checkpoint
(`TrainState.wandb_run_id`, `resume="allow"`). `wandb sync RUN_DIR/wandb/offline-run-*` groups
the folders of one id and uploads them in start-time order as one run.

TensorBoard (`logging.tensorboard`): `${run.dir}/tensorboard/`, appended by every job; each job
starts with `purge_step` = resumed step + 1, so TensorBoard drops the events a crashed job wrote
after the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from pretrain.config import LoggingConfig, PretrainConfig
from pretrain.progress import console_line
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


FINAL_KEYS = (
    "step",
    "loss",
    "valid_loss",
    "valid_ppl",
    "accuracy",
    "valid_accuracy",
    "consumed_tokens",
)
"""Keys of the last metrics row that the W&B / TensorBoard summary holds (as `final_<key>`)."""

NOT_SCALARS = ("step", "max_steps")
"""Row keys that are not plotted as scalars (the x axis, a constant)."""


class RunLogger(Protocol):
    """What the training loop logs through (rank 0: MetricsLogger, elsewhere NullLogger)."""

    last_record: dict[str, Any] | None
    """The newest metrics row: logged by this job, or kept from an earlier one on resume."""

    def log(self, record: dict[str, Any]) -> None:
        """One metrics row (a step, with the evaluation at that step if any)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Final values of the run."""

    def finish(self) -> None:
        """Close files and services."""


class MetricsLogger:
    """Writes one JSON object per logged step; prints a console line; mirrors to W&B and
    TensorBoard.

    Only rank 0 creates one (`build_logger` returns a `NullLogger` elsewhere).
    """

    def __init__(self, cfg: PretrainConfig, run_dir: Path, state: TrainState) -> None:
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        kept = truncate_metrics(self.path, state.step)  # a fresh run (step 0) keeps nothing
        self.last_record: dict[str, Any] | None = kept[-1] if kept else None
        self._file = self.path.open("a", encoding="utf-8")
        self.wandb = _init_wandb(cfg, run_dir, state)
        self.tensorboard = _init_tensorboard(cfg.logging, run_dir, state.step)

    def log(self, record: dict[str, Any]) -> None:
        """Append a row (rank 0), mirror it, print it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.last_record = record
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.tensorboard is not None:
            for key, value in scalar_items(record).items():
                self.tensorboard.add_scalar(key, value, global_step=record["step"])
            self.tensorboard.flush()
        if "loss" in record:
            log.info(console_line(record) + _accuracy_text(record.get("accuracy")))
        if record.get("valid_loss") is not None:
            log.info(
                "step %d | valid loss %.4f | valid ppl %.2f%s",
                record["step"],
                record["valid_loss"],
                record["valid_ppl"],
                _accuracy_text(record.get("valid_accuracy"), "valid accuracy"),
            )

    def summary(self, values: dict[str, Any]) -> None:
        """Final values: the W&B summary, and TensorBoard scalars at the last logged step."""
        if self.wandb is not None:
            for key, value in values.items():
                self.wandb.summary[key] = value
        if self.tensorboard is not None:
            step = (self.last_record or {}).get("step", 0)
            for key, value in scalar_items(values).items():
                self.tensorboard.add_scalar(key, value, global_step=step)
            self.tensorboard.flush()

    def finish(self) -> None:
        """Close files, the TensorBoard writer and the W&B run."""
        self._file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _accuracy_text(value: float | None, name: str = "accuracy") -> str:
    """` | accuracy 0.4213` for objective=mlm's masked-token accuracy; "" when absent."""
    return "" if value is None else f" | {name} {value:.4f}"


class NullLogger:
    """Logger for ranks other than 0: does nothing."""

    last_record: dict[str, Any] | None = None
    """Always None: only rank 0 keeps rows."""

    def log(self, record: dict[str, Any]) -> None:
        return None

    def summary(self, values: dict[str, Any]) -> None:
        return None

    def finish(self) -> None:
        return None


def build_logger(cfg: PretrainConfig, run_dir: Path, state: TrainState, rank: int) -> RunLogger:
    """MetricsLogger on global rank 0, NullLogger elsewhere."""
    return MetricsLogger(cfg, run_dir, state) if rank == 0 else NullLogger()


def read_rows(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows in file order; an unreadable line (torn by a kill) is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def rows_until(rows: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """One row per step <= `step`, in step order; rows of one step are merged (later wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["step"] <= step:
            by_step.setdefault(row["step"], {}).update(row)
    return [by_step[k] for k in sorted(by_step)]


def truncate_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the rows of steps <= `step` in `path` (atomic rewrite); returns them.

    A job resumed from the checkpoint of `step` replays the steps after it, so the rows a
    crashed job wrote for them go. Nothing is rewritten when nothing changes.
    """
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = rows_until(read_rows(path), step)
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(row) + "\n" for row in kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        log.info("metrics.jsonl: kept %d rows up to step %d", len(kept), step)
    return kept


def scalar_items(record: dict[str, Any]) -> dict[str, float]:
    """The plottable values of a row: numbers, not booleans or None, without step/max_steps."""
    return {
        key: float(value)
        for key, value in record.items()
        if key not in NOT_SCALARS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def final_values(record: dict[str, Any] | None) -> dict[str, Any]:
    """`final_<key>` of the last row's FINAL_KEYS that it has (the run's summary)."""
    record = record or {}
    return {f"final_{k}": record[k] for k in FINAL_KEYS if record.get(k) is not None}


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


def _init_tensorboard(logging_cfg: LoggingConfig, run_dir: Path, step: int) -> Any:
    if not logging_cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: TensorBoard hides the events of steps >= it that earlier files hold
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=step + 1)


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite in JSON."""
    return math.exp(min(loss, 80.0))
