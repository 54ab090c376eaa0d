"""`python -m pretrain.report RUN_DIR [RUN_DIR ...]`: draw a run's metrics.jsonl as a PNG.

Panels: train and validation loss against tokens, learning rate, tokens/s. One run:
RUN_DIR/report.png (also drawn at the end of training). Several runs: the same panels with one
line per run (legend: the run directory's name, or `--labels a,b`), default
./report-overlay.png. Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretrain.metrics import read_rows

OVERLAY_PNG = "report-overlay.png"
"""Default output of several runs, in the current directory."""
PANELS = (("lr", "learning rate"), ("tokens_per_s", "tokens/s"))
"""The panels after the loss panel: (metrics key, title)."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of RUN_DIR/metrics.jsonl, one per step in step order (rows of a repeated step
    are merged, the last wins); a line torn by a kill is dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_rows(path):
        by_step.setdefault(record["step"], {}).update(record)
    return [by_step[k] for k in sorted(by_step)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs = [r.get("consumed_tokens", r["step"]) for r in records if r.get(key) is not None]
    ys = [r[key] for r in records if r.get(key) is not None]
    return xs, ys


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].set_ylabel("loss")
    axes[0].set_title("loss")
    for ax, (_, title) in zip(axes[1:], PANELS, strict=True):
        ax.set_title(title)
    return fig, axes


def _save(fig: Any, axes: Any, title: str, out_path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    for axis in axes:
        axis.set_xlabel("tokens")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_formatter(EngFormatter())
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the report of one run (default RUN_DIR/report.png); returns the PNG path."""
    records = read_metrics(run_dir)
    fig, axes = _figure()
    axes[0].plot(*_series(records, "loss"), label="train loss", lw=1.2)
    vx, vy = _series(records, "valid_loss")
    if vx:
        axes[0].plot(vx, vy, "o-", label="valid loss", lw=1.5)
    for ax, (key, _) in zip(axes[1:], PANELS, strict=True):
        ax.plot(*_series(records, key), lw=1.2)
    title = f"{Path(run_dir).name}: {len(records)} logged steps"
    return _save(fig, axes, title, Path(out) if out else Path(run_dir) / "report.png")


def default_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Each run directory's name, or the path as given when two runs share a name."""
    names = [Path(d).name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def write_overlay(
    run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Draw several runs in the same three panels, one colour per run (train loss as lines,
    valid loss as markers of the same colour); returns the PNG path."""
    labels = list(labels) if labels else default_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    runs = [read_metrics(d) for d in run_dirs]  # every run is checked before drawing
    fig, axes = _figure()
    for records, label in zip(runs, labels, strict=True):
        (line,) = axes[0].plot(*_series(records, "loss"), label=label, lw=1.2)
        color = line.get_color()
        axes[0].plot(*_series(records, "valid_loss"), "o", color=color, ms=5)
        for ax, (key, _) in zip(axes[1:], PANELS, strict=True):
            ax.plot(*_series(records, key), lw=1.2, color=color)
    title = f"{len(runs)} runs: train loss (lines), valid loss (markers)"
    return _save(fig, axes, title, Path(out))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.report", description=__doc__)
    parser.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directory (contains metrics.jsonl)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"output PNG (default RUN_DIR/report.png; several runs: ./{OVERLAY_PNG})",
    )
    parser.add_argument(
        "--labels", default=None, help="legend names of several runs, one per RUN_DIR: a,b,..."
    )
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    try:
        if labels is not None and len(labels) != len(args.run_dirs):
            raise ValueError(f"--labels has {len(labels)} names for {len(args.run_dirs)} runs")
        if len(args.run_dirs) == 1:
            path = write_report(args.run_dirs[0], args.out)
        else:
            path = write_overlay(args.run_dirs, args.out or OVERLAY_PNG, labels)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
