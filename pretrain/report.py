"""`python -m pretrain.report RUN_DIR`: draw RUN_DIR/report.png from RUN_DIR/metrics.jsonl.

Panels: train and validation loss against tokens, learning rate, tokens/s. Uses matplotlib's
Agg backend (no display needed). Also called at the end of training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of RUN_DIR/metrics.jsonl (the last record wins for a repeated step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            by_step.setdefault(record["step"], {}).update(record)
    return [by_step[k] for k in sorted(by_step)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs = [r.get("consumed_tokens", r["step"]) for r in records if r.get(key) is not None]
    ys = [r[key] for r in records if r.get(key) is not None]
    return xs, ys


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the report; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    out_path = Path(out) if out else Path(run_dir) / "report.png"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(*_series(records, "loss"), label="train loss", lw=1.2)
    vx, vy = _series(records, "valid_loss")
    if vx:
        ax.plot(vx, vy, "o-", label="valid loss", lw=1.5)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    for ax, key, title in ((axes[1], "lr", "learning rate"), (axes[2], "tokens_per_s", "tokens/s")):
        ax.plot(*_series(records, key), lw=1.2)
        ax.set_xlabel("tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import EngFormatter

    for axis in axes:
        axis.xaxis.set_major_formatter(EngFormatter())
    fig.suptitle(f"{Path(run_dir).name}: {len(records)} logged steps")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pretrain.report", description=__doc__)
    parser.add_argument("run_dir", help="training run directory (contains metrics.jsonl)")
    parser.add_argument("--out", default=None, help="output PNG (default RUN_DIR/report.png)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, args.out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
