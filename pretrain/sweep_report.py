"""`python -m pretrain.sweep_report SWEEP_DIR`: one table, one PNG and one JSON line for a sweep.

A sweep point is a direct subdirectory of SWEEP_DIR (not a dot-folder) that has metrics.jsonl,
point.json or .hydra/. Its status is point.json's when present, else derived from the metrics:
`finished` (last step == max_steps), `preempted` (a PREEMPTED marker), `incomplete`, or
`no metrics`. The best point has the lowest final `--metric` (default valid_loss; train loss
when no candidate has one), among the finished points if any finished. The last stdout line is
one JSON object (`--json`: only that line). Errors: exit 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.faults import PREEMPTED_MARKER
from pretrain.metrics import read_rows
from pretrain.progress import format_duration

METRICS_FILE = "metrics.jsonl"
POINT_FILE = "point.json"
PNG_NAME = "sweep_report.png"
TAIL_ROWS = 5
"""Training rows at the end of a run whose tokens/s and MFU are averaged."""
ERROR_CHARS = 200
"""A point's error is cut to this length under the table."""
JSON_KEYS = ("point", "status", "step", "max_steps", "train_loss", "valid_loss", "tokens_per_s")
JSON_KEYS += ("mfu", "wall_s", "exit_code", "error", "run_dir")
"""The keys of each point in the JSON line, in order."""


class SweepError(Exception):
    """A SWEEP_DIR that cannot be reported (the CLI prints it and exits 2)."""


@dataclass
class PointSummary:
    """One sweep point: its final values, and its rows (one per step) for the plot."""

    point: str
    run_dir: str
    status: str
    step: int | None = None
    max_steps: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    wall_s: float | None = None
    exit_code: int | None = None
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The JSON line's entry (non-finite numbers become null)."""
        return {key: _finite_or_none(getattr(self, key)) for key in JSON_KEYS}


@dataclass
class SweepSummary:
    """All points of a sweep, and the best one by `metric`."""

    sweep_dir: str
    points: list[PointSummary]
    best: str | None = None
    metric: str = "valid_loss"
    """The metric the best point was chosen by (after the fallback to train loss)."""

    def best_point(self) -> PointSummary | None:
        return next((p for p in self.points if p.point == self.best), None)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _last(rows: list[dict[str, Any]], key: str) -> float | None:
    return next((_number(r[key]) for r in reversed(rows) if _number(r.get(key)) is not None), None)


def _first_int(*values: Any) -> int | None:
    return next((v for v in values if isinstance(v, int) and not isinstance(v, bool)), None)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def wall_seconds(rows: list[dict[str, Any]]) -> float | None:
    """Wall time over all jobs: the sum of each job's last `elapsed_s`. Rows in file order; a
    job starts where `elapsed_s` drops or the step repeats or goes back (a resume appends)."""
    total, current, prev = 0.0, None, None
    for row in rows:
        elapsed = _number(row.get("elapsed_s"))
        if elapsed is None:
            continue
        if current is not None and (elapsed < current or row["step"] <= prev["step"]):
            total += current
        current, prev = elapsed, row
    return None if current is None else total + current


def last_row_per_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step in step order: the last one written for it (a replayed step wins)."""
    by_step = {row["step"]: row for row in rows}
    return [by_step[step] for step in sorted(by_step)]


def _read_point_file(run_dir: Path) -> dict[str, Any]:
    """point.json as a dict; {} when absent or unreadable (then metrics decide)."""
    try:
        info = json.loads((run_dir / POINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _derived_status(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    last = rows[-1] if rows else None
    if last is not None and last.get("max_steps") is not None and last["step"] >= last["max_steps"]:
        return "finished"
    if (run_dir / PREEMPTED_MARKER).exists():
        return "preempted"
    return "incomplete" if rows else "no metrics"


def summarize_point(run_dir: Path) -> PointSummary:
    """The summary of one sweep point's run directory."""
    metrics = run_dir / METRICS_FILE
    raw = read_rows(metrics) if metrics.is_file() else []
    rows = last_row_per_step(raw)
    info = _read_point_file(run_dir)
    train = [r for r in rows if _number(r.get("loss")) is not None][-TAIL_ROWS:]
    rates = [_number(r.get("tokens_per_s_smoothed")) for r in train]
    if all(v is None for v in rates):
        rates = [_number(r.get("tokens_per_s")) for r in train]
    logged_max = next((r["max_steps"] for r in reversed(rows) if "max_steps" in r), None)
    error = info.get("error")
    return PointSummary(
        point=str(info.get("point") or run_dir.name),
        run_dir=str(run_dir),
        status=str(info.get("status") or _derived_status(run_dir, rows)),
        step=rows[-1]["step"] if rows else None,
        max_steps=_first_int(logged_max, info.get("max_steps")),
        train_loss=_last(rows, "loss"),
        valid_loss=_last(rows, "valid_loss"),
        tokens_per_s=_mean(rates),
        mfu=_mean([_number(r.get("mfu")) for r in train]),
        wall_s=wall_seconds(raw),
        exit_code=_first_int(info.get("exit_code")),
        error=" ".join(str(error).split()) if error else None,
        rows=rows,
    )


def is_point_dir(path: Path) -> bool:
    """A direct subdirectory of the sweep dir that holds one point's run."""
    if not path.is_dir() or path.name.startswith("."):
        return False
    return any((path / name).exists() for name in (METRICS_FILE, POINT_FILE, ".hydra"))


def _sort_key(path: Path) -> tuple[int, int, str]:
    # Hydra's numbered job dirs (0, 1, ..., 10) in number order, named points by name
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def point_dirs(sweep_dir: Path) -> list[Path]:
    """The point directories of `sweep_dir`; SweepError when it is not a sweep directory."""
    hint = "e.g. checkpoints/<sweep name>"
    if not sweep_dir.exists():
        raise SweepError(f"{sweep_dir} not found: give the sweep directory, {hint}")
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir} is not a directory: give the sweep directory, {hint}")
    dirs = sorted((p for p in sweep_dir.iterdir() if is_point_dir(p)), key=_sort_key)
    if not dirs:
        single = (sweep_dir / METRICS_FILE).is_file()
        one_run = f" ({sweep_dir} is one run: python -m pretrain.report {sweep_dir})"
        raise SweepError(
            f"{sweep_dir} has no sweep points (subdirectories with {METRICS_FILE}): is this "
            f"the sweep dir? {hint}" + (one_run if single else "")
        )
    return dirs


def _final(point: PointSummary, metric: str) -> float | None:
    value = point.valid_loss if metric == "valid_loss" else point.train_loss
    return value if value is not None and math.isfinite(value) else None


def choose_best(points: list[PointSummary], metric: str) -> tuple[str | None, str]:
    """(best point name, metric used): the lowest final `metric` among the finished points
    (all points if none finished); valid_loss falls back to train loss when no candidate
    has one."""
    finished = [p for p in points if p.status == "finished"]
    candidates = finished or points
    if metric == "valid_loss" and all(_final(p, metric) is None for p in candidates):
        metric = "loss"
    scored = [(value, p.point) for p in candidates if (value := _final(p, metric)) is not None]
    return (min(scored)[1] if scored else None), metric


def build_summary(sweep_dir: str | Path, metric: str = "valid_loss") -> SweepSummary:
    """Summaries of every point of `sweep_dir` and the best point (SweepError if not a sweep)."""
    points = [summarize_point(d) for d in point_dirs(Path(sweep_dir))]
    best, used = choose_best(points, metric)
    return SweepSummary(sweep_dir=str(sweep_dir), points=points, best=best, metric=used)


HEADER = ("", "point", "status", "steps", "train loss", "valid loss", "tok/s", "MFU", "wall")
LEFT_ALIGNED = 3
"""The first columns (best marker, point, status) are left-aligned, the numbers right."""


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _table_row(p: PointSummary, best: bool) -> list[str]:
    steps = "-" if p.step is None else f"{p.step}/{p.max_steps or '?'}"
    mfu = None if p.mfu is None else 100 * p.mfu
    return ["*" if best else "", p.point, p.status, steps, _fmt(p.train_loss, ".4f")] + [
        _fmt(p.valid_loss, ".4f"),
        _fmt(p.tokens_per_s, ".0f"),
        _fmt(mfu, ".1f", "%"),
        format_duration(p.wall_s),
    ]


def _error_line(p: PointSummary) -> str:
    code = "" if p.exit_code is None else f" (exit {p.exit_code})"
    error = p.error or "no error recorded"
    if len(error) > ERROR_CHARS:
        error = error[: ERROR_CHARS - 3] + "..."
    return f"{p.point}: {p.status}{code}: {error}"


def format_table(summary: SweepSummary) -> str:
    """The aligned table, the error lines of failed points, and the `best:` line."""
    table = [list(HEADER)] + [_table_row(p, p.point == summary.best) for p in summary.points]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = []
    for row in table:
        cells = [
            c.ljust(w) if i < LEFT_ALIGNED else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += [_error_line(p) for p in summary.points if p.error or p.status == "failed"]
    best = summary.best_point()
    if best is None:
        lines.append(f"best: - (no point has a final {summary.metric})")
    else:
        lines.append(f"best: {best.point} ({summary.metric} {_final(best, summary.metric):.4f})")
    return "\n".join(lines)


def summary_json(summary: SweepSummary, png: Path | None) -> dict[str, Any]:
    """The machine-readable summary (the CLI's last stdout line)."""
    return {
        "sweep_dir": summary.sweep_dir,
        "best": summary.best,
        "metric": summary.metric,
        "points": [p.to_json() for p in summary.points],
        "png": None if png is None else str(png),
    }


def write_plot(summary: SweepSummary, out: str | Path) -> Path:
    """Overlay every point's train loss (lines) and valid loss (markers) against tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 6))
    drawn = [p for p in summary.points if _series(p.rows, "loss")[0]]
    for p in drawn:
        best = p.point == summary.best
        label = f"{p.point} (best)" if best else p.point
        width, z = (3.0, 3) if best else (1.2, 2)
        xs, ys = _series(p.rows, "loss")
        (line,) = ax.plot(xs, ys, lw=width, zorder=z, label=label)
        vx, vy = _series(p.rows, "valid_loss")
        marker_size = 9 if best else 5
        ax.plot(vx, vy, "o", ms=marker_size, color=line.get_color(), zorder=z + 1)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_title(f"{Path(summary.sweep_dir).name}: train loss (lines), valid loss (markers)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no point logged a train loss", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    kept = [r for r in rows if _number(r.get(key)) is not None]
    return [r.get("consumed_tokens", r["step"]) for r in kept], [r[key] for r in kept]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.sweep_report", description=__doc__)
    parser.add_argument("sweep_dir", help="sweep directory (one subdirectory per point)")
    parser.add_argument("--out", default=None, help=f"output PNG (default SWEEP_DIR/{PNG_NAME})")
    metric_help = "final value that picks the best point (default valid_loss)"
    parser.add_argument(
        "--metric", choices=("valid_loss", "loss"), default="valid_loss", help=metric_help
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    try:
        summary = build_summary(args.sweep_dir, args.metric)
        png = write_plot(summary, args.out or Path(args.sweep_dir) / PNG_NAME)
    except (SweepError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print(format_table(summary))
    print(json.dumps(summary_json(summary, png)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
