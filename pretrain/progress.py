"""Training progress: smoothed step time and throughput, elapsed time, ETA, the console line.

`StepMeter` keeps a window of recent step times that the loop feeds every step (logged or not);
the rest are pure functions of numbers or of one metrics row.

- smoothed tokens/s = tokens per step / mean training time (data + fwd-bwd + optimizer) of the
  last `SMOOTHING_WINDOW` steps;
- ETA = steps left to this job's last step (train.stop_at_step or max_steps) x mean wall time
  between the last steps' ends (so periodic evaluations and saves are included);
- elapsed = wall time since this job's training loop started.

The first step of a job (warm-up: allocator, data workers, first collectives) leaves the window
as soon as a second step exists.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

SMOOTHING_WINDOW = 20
"""Steps averaged for the smoothed step time, tokens/s and the ETA."""


def window_mean(values: Sequence[float]) -> float | None:
    """Mean of `values` (None when empty)."""
    return sum(values) / len(values) if values else None


def per_second(amount: float, seconds: float | None) -> float | None:
    """amount / seconds (None without a positive time)."""
    if seconds is None or seconds <= 0:
        return None
    return amount / seconds


def eta_seconds(mean_step_s: float | None, steps_left: int) -> float | None:
    """Remaining wall time: steps_left x mean step time (0 when nothing is left)."""
    if steps_left <= 0:
        return 0.0
    return None if mean_step_s is None else steps_left * mean_step_s


def format_duration(seconds: float | None) -> str:
    """`H:MM:SS`, with a day count past 24 h (`2d 03:04:05`); `-` for None."""
    if seconds is None:
        return "-"
    total = round(max(seconds, 0.0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StepMeter:
    """Recent step times of this job: training time and wall time between step ends."""

    def __init__(self, window: int = SMOOTHING_WINDOW, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        """Wall clock (time.monotonic) when this job's loop started."""
        self._train_s: deque[float] = deque(maxlen=window)
        self._wall_s: deque[float] = deque(maxlen=window)
        self._last_end = self.start
        self.steps = 0
        """Steps fed so far."""

    def update(self, train_s: float, now: float | None = None) -> None:
        """One finished step: its training time, and the wall clock at its end."""
        now = time.monotonic() if now is None else now
        if self.steps == 1:  # the warm-up step leaves once a regular one exists
            self._train_s.clear()
            self._wall_s.clear()
        self._train_s.append(train_s)
        self._wall_s.append(now - self._last_end)
        self._last_end = now
        self.steps += 1

    @property
    def mean_train_s(self) -> float | None:
        """Smoothed training time of one step (data + fwd-bwd + optimizer)."""
        return window_mean(self._train_s)

    @property
    def mean_wall_s(self) -> float | None:
        """Smoothed wall time of one step, evaluation, saving and logging included."""
        return window_mean(self._wall_s)

    def elapsed_s(self, now: float | None = None) -> float:
        """Wall seconds since this job's loop started."""
        return (time.monotonic() if now is None else now) - self.start


def progress_fields(
    meter: StepMeter, tokens_per_step: int, world_size: int, steps_left: int
) -> dict[str, float | None]:
    """The smoothed metrics row fields (see the module docstring)."""
    smoothed = per_second(tokens_per_step, meter.mean_train_s)
    return {
        "tokens_per_s_smoothed": smoothed,
        "tokens_per_s_per_device": None if smoothed is None else smoothed / world_size,
        "elapsed_s": meter.elapsed_s(),
        "eta_s": eta_seconds(meter.mean_wall_s, steps_left),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def console_line(r: dict[str, Any]) -> str:
    """One progress line of a metrics row (rank 0 prints it for every logged step)."""
    parts = [
        f"step {r['step']}/{r['max_steps']}",
        f"loss {_fmt(r['loss'])}",
        f"lr {r['lr']:.3e}",
        f"grad_norm {_fmt(r['grad_norm'])}",
        f"tok/s {_rate(r.get('tokens_per_s_smoothed'))} "
        f"({_rate(r.get('tokens_per_s_per_device'))}/dev)",
        f"TFLOP/s/dev {r['tflops_per_device']:.3g}",
    ]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    parts.append(
        f"time data/fwd-bwd/opt {1000 * r['data_s']:.0f}/{1000 * r['fwd_bwd_s']:.0f}/"
        f"{1000 * r['optim_s']:.0f} ms"
    )
    parts.append(f"mem {r['mem_gib']:.2f} GiB")
    parts.append(
        f"elapsed {format_duration(r.get('elapsed_s'))} ETA {format_duration(r.get('eta_s'))}"
    )
    if r.get("skipped"):
        parts.append("SKIPPED" + (" (fp16 overflow)" if r.get("overflow") else " (non-finite)"))
    return " | ".join(parts)
