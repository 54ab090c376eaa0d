"""`python -m pretrain.sweep_report` and the multi-run `python -m pretrain.report` on synthetic
run directories (no training).

The sweep: two finished points (one resumed, with replayed steps and a restarted `elapsed_s`),
a failed point with point.json and no metrics, a preempted point with the lowest validation
loss (not eligible: not finished), a finished point without validation loss that logs only
`tokens_per_s`, an incomplete resumed point, a point with only .hydra/, and the files and
folders of a Hydra sweep dir that are not points (a dot-folder with metrics.jsonl included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.figure
import pytest

from pretrain.report import main as report_main
from pretrain.sweep_report import JSON_KEYS, build_summary, wall_seconds
from pretrain.sweep_report import main as sweep_main
from tests.conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 1000


def _row(step: int, loss: float, elapsed: float, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "max_steps": 10,
        "loss": loss,
        "lr": 1e-3,
        "consumed_tokens": step * TOKENS_PER_STEP,
        "tokens_per_s": 900.0,
        "tokens_per_s_smoothed": 2000.0 + step,
        "mfu": None,
        "elapsed_s": elapsed,
        **extra,
    }


def _write_run(run_dir: Path, rows: list[dict[str, Any]], torn: bool = False) -> Path:
    run_dir.mkdir(parents=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (run_dir / "metrics.jsonl").write_text(text + ('{"step": 11, "lo' if torn else ""))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "lr-sweep"
    # finished in one job (elapsed 5..50 s), eval at 5 and 10, a torn last line
    a = [_row(s, 5.0 - 0.07 * s, 5.0 * s) for s in range(1, 11)]
    a[4]["valid_loss"], a[9]["valid_loss"] = 4.6, 4.2
    _write_run(root / "optim.lr=0.001", a, torn=True)
    # finished in two jobs: steps 1-6 (elapsed to 60 s), resumed from step 4: 5-10 (to 30 s)
    first = [_row(s, 9.9, 10.0 * s, mfu=0.1) for s in range(1, 7)]
    second = [_row(s, 5.0 - 0.09 * s, 5.0 * (s - 4), mfu=0.4) for s in range(5, 11)]
    second[-1]["valid_loss"] = 4.0
    b = _write_run(root / "optim.lr=0.003", first + second)
    (b / ".hydra").mkdir()
    (b / ".hydra" / "overrides.yaml").write_text("- optim.lr=0.003\n")
    (b / "latest").write_text("iter_0000010\n")
    (b / "iter_0000010").mkdir()
    # failed before logging anything
    c = root / "optim.lr=0.01"
    c.mkdir(parents=True)
    info = {"point": "optim.lr=0.01", "overrides": ["optim.lr=0.01"], "status": "failed"}
    info["max_steps"] = 10
    info |= {"exit_code": 1, "error": "torch.OutOfMemoryError:\n CUDA out of memory", "job_id": "7"}
    (c / "point.json").write_text(json.dumps(info))
    # preempted at step 4 with the lowest validation loss of all
    d = [_row(s, 3.6, 10.0 * s) for s in range(1, 5)]
    d[-1]["valid_loss"] = 3.5
    d_dir = _write_run(root / "optim.lr=0.03", d)
    (d_dir / "PREEMPTED").write_text(json.dumps({"step": 4, "exit_code": 75}))
    # finished, no evaluation, only tokens_per_s (1500/s), lowest train loss of the finished
    e = [_row(s, 3.9, 2.0 * s, tokens_per_s=1500.0) for s in range(1, 11)]
    for row in e:
        del row["tokens_per_s_smoothed"]
    _write_run(root / "model=gpt2-125m,optim.lr=0.0003", e)
    # incomplete: steps 1-3 (to 30 s), then resumed from step 2: step 3 again (12 s)
    f = [_row(1, 6.0, 10.0), _row(2, 5.8, 20.0), _row(3, 5.5, 30.0), _row(3, 5.0, 12.0)]
    _write_run(root / "optim.lr=0.1", f)
    # queued, nothing but the Hydra config
    (root / "optim.lr=1.0" / ".hydra").mkdir(parents=True)
    # not points
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".submitit" / "123").mkdir(parents=True)
    _write_run(root / ".old", [_row(1, 1.0, 1.0, valid_loss=1.0)])
    (root / "notes").mkdir()
    return root


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = sweep_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _point_of(line: str) -> str:
    return line.lstrip("* ").split()[0]


def _table_line(out: str, point: str) -> str:
    return next(line for line in out.splitlines() if _point_of(line) == point)


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_table_best_point_and_error_lines(sweep, capsys):
    code, out, err = _run(capsys, [str(sweep)])
    assert code == 0, err
    lines = out.splitlines()
    header = lines[0]
    columns = ["point", "status", "steps", "train loss", "valid loss", "tok/s", "MFU", "wall"]
    assert [c.strip() for c in header.split("  ") if c.strip()] == columns
    rows = lines[1:8]
    names = [_point_of(line) for line in rows]
    assert names == [
        "model=gpt2-125m,optim.lr=0.0003",
        "optim.lr=0.001",
        "optim.lr=0.003",
        "optim.lr=0.01",
        "optim.lr=0.03",
        "optim.lr=0.1",
        "optim.lr=1.0",
    ]
    # aligned: text columns start where their header does, numbers end where theirs does
    for line in rows:
        start = header.index("status")
        assert line[start - 2 : start] == "  " and line[start] != " ", line
        for column in ("steps", "tok/s", "wall"):
            end = header.index(column) + len(column)
            assert line[end - 1] != " " and line[end : end + 2] in ("  ", ""), (column, line)
    assert _table_line(out, "optim.lr=0.001").split()[1:] == [
        "finished",
        "10/10",
        "4.3000",
        "4.2000",
        "2008",  # mean of the smoothed tokens/s of the last 5 rows (2006..2010)
        "-",
        "0:00:50",
    ]
    best = _table_line(out, "optim.lr=0.003")
    assert best.startswith("* ")
    assert best.split()[2:] == ["finished", "10/10", "4.1000", "4.0000", "2008", "40.0%", "0:01:30"]
    assert [line for line in rows if line.startswith("*")] == [best]
    assert _table_line(out, "optim.lr=0.01").split()[1:] == ["failed"] + ["-"] * 6
    assert _table_line(out, "optim.lr=0.03").split()[1:4] == ["preempted", "4/10", "3.6000"]
    assert _table_line(out, "model=gpt2-125m,optim.lr=0.0003").split()[4:6] == ["-", "1500"]
    assert _table_line(out, "optim.lr=0.1").split()[1:4] == ["incomplete", "3/10", "5.0000"]
    assert _table_line(out, "optim.lr=1.0").split()[1:] == ["no", "metrics"] + ["-"] * 6
    # under the table: the failed point's error on one line, then the best point
    assert lines[8] == "optim.lr=0.01: failed (exit 1): torch.OutOfMemoryError: CUDA out of memory"
    assert lines[9] == "best: optim.lr=0.003 (valid_loss 4.0000)"
    assert len(lines) == 11  # the JSON line last


def test_json_line_values_and_plot(sweep, capsys, legends):
    code, out, _ = _run(capsys, [str(sweep)])
    assert code == 0
    summary = json.loads(out.splitlines()[-1])
    assert set(summary) == {"sweep_dir", "best", "metric", "points", "png"}
    assert summary["sweep_dir"] == str(sweep)
    assert (summary["best"], summary["metric"]) == ("optim.lr=0.003", "valid_loss")
    points = {p["point"]: p for p in summary["points"]}
    assert all(tuple(p) == JSON_KEYS for p in summary["points"])
    resumed = points["optim.lr=0.003"]
    assert (resumed["step"], resumed["max_steps"], resumed["status"]) == (10, 10, "finished")
    assert resumed["wall_s"] == 90.0  # 60 s + 30 s: the two jobs' elapsed_s
    assert resumed["mfu"] == pytest.approx(0.4)
    assert resumed["train_loss"] == pytest.approx(4.1)
    assert resumed["valid_loss"] == 4.0
    assert resumed["run_dir"] == str(sweep / "optim.lr=0.003")
    again = points["optim.lr=0.1"]  # step 3 twice: the resumed job's row wins
    assert (again["train_loss"], again["wall_s"], again["step"]) == (5.0, 42.0, 3)
    failed = points["optim.lr=0.01"]
    assert (failed["status"], failed["exit_code"], failed["step"]) == ("failed", 1, None)
    assert failed["max_steps"] == 10  # from point.json
    assert failed["error"] == "torch.OutOfMemoryError: CUDA out of memory"
    assert points["optim.lr=0.001"]["wall_s"] == 50.0
    assert points["optim.lr=0.001"]["mfu"] is None
    assert points["optim.lr=0.001"]["exit_code"] is None
    assert points["model=gpt2-125m,optim.lr=0.0003"]["tokens_per_s"] == 1500.0
    assert points["model=gpt2-125m,optim.lr=0.0003"]["valid_loss"] is None
    assert points["optim.lr=0.03"]["status"] == "preempted"
    assert summary["png"] == str(sweep / "sweep_report.png")
    _assert_png(sweep / "sweep_report.png")
    # one curve per point that logged a train loss, the best one named so
    assert legends == [
        [
            "model=gpt2-125m,optim.lr=0.0003",
            "optim.lr=0.001",
            "optim.lr=0.003 (best)",
            "optim.lr=0.03",
            "optim.lr=0.1",
        ]
    ]


def test_json_only_out_and_metric(sweep, tmp_path, capsys):
    png = tmp_path / "plots" / "lr.png"
    code, out, _ = _run(capsys, [str(sweep), "--json", "--metric", "loss", "--out", str(png)])
    assert code == 0
    assert len(out.splitlines()) == 1
    summary = json.loads(out)
    # train loss: the finished point without evaluation (3.9), not the preempted one (3.6)
    assert (summary["best"], summary["metric"]) == ("model=gpt2-125m,optim.lr=0.0003", "loss")
    assert summary["png"] == str(png)
    _assert_png(png)
    assert not (sweep / "sweep_report.png").exists()


def test_best_falls_back_to_train_loss_and_to_unfinished_points(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _write_run(sweep / "a", [_row(1, 5.0, 1.0), _row(2, 4.5, 2.0)])
    _write_run(sweep / "b", [_row(1, 5.0, 1.0), _row(2, 4.4, 2.0)])
    code, out, _ = _run(capsys, [str(sweep)])
    assert code == 0
    assert "best: b (loss 4.4000)" in out.splitlines()
    assert _table_line(out, "b").startswith("* ")
    summary = build_summary(sweep)
    assert (summary.best, summary.metric) == ("b", "loss")
    assert [p.status for p in summary.points] == ["incomplete", "incomplete"]


def test_point_json_status_wins_and_numbered_dirs_sort_by_number(tmp_path):
    sweep = tmp_path / "sweep"
    for number in (10, 2, 1):
        _write_run(sweep / str(number), [_row(s, 4.0 + number, s) for s in range(1, 11)])
    (sweep / "2" / "point.json").write_text(json.dumps({"point": "lr=2", "status": "running"}))
    summary = build_summary(sweep)
    assert [p.point for p in summary.points] == ["1", "lr=2", "10"]
    assert [p.status for p in summary.points] == ["finished", "running", "finished"]
    assert summary.best == "1"


def test_wall_seconds_segments():
    rows = [{"step": s, "elapsed_s": e} for s, e in ((1, 10), (2, 20), (3, 5), (4, 15))]
    assert wall_seconds(rows) == 35.0  # elapsed_s dropped: a new job
    rows = [{"step": s, "elapsed_s": e} for s, e in ((1, 10), (2, 20), (2, 25), (3, 30))]
    assert wall_seconds(rows) == 50.0  # a step repeated: a new job, even with elapsed_s rising
    assert wall_seconds([{"step": 1}]) is None


@pytest.mark.parametrize("case", ["missing", "file", "empty", "one run"])
def test_not_a_sweep_dir_exits_2_with_one_line(case, tmp_path, capsys):
    target = tmp_path / "target"
    if case == "file":
        target.write_text("x")
    elif case == "empty":
        (target / ".submitit").mkdir(parents=True)
        (target / "multirun.yaml").write_text("{}\n")
        (target / "notes").mkdir()
    elif case == "one run":
        _write_run(target, [_row(1, 5.0, 1.0)])
        (target / "iter_0000001").mkdir()
    code, out, err = _run(capsys, [str(target)])
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(target) in err
    expected = {
        "missing": "not found",
        "file": "is not a directory",
        "empty": "no sweep points (subdirectories with metrics.jsonl): is this the sweep dir?",
        "one run": f"is one run: python -m pretrain.report {target}",
    }
    assert expected[case] in err


def test_module_entry_point(sweep):
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.sweep_report", str(sweep), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["best"] == "optim.lr=0.003"
    missing = subprocess.run(
        [sys.executable, "-m", "pretrain.sweep_report", str(sweep / "nope")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr


@pytest.fixture
def legends(monkeypatch) -> list[list[str]]:
    """The legend texts of each figure's first panel, recorded as it is saved."""
    seen: list[list[str]] = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        legend = fig.axes[0].get_legend()
        seen.append([t.get_text() for t in legend.get_texts()] if legend else [])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return seen


def test_report_overlays_two_runs(sweep, tmp_path, monkeypatch, capsys, legends):
    runs = [str(sweep / "optim.lr=0.001"), str(sweep / "optim.lr=0.003")]
    monkeypatch.chdir(tmp_path)
    assert report_main(runs) == 0
    assert capsys.readouterr().out.strip() == "report-overlay.png"
    _assert_png(tmp_path / "report-overlay.png")
    out = tmp_path / "lr.png"
    assert report_main([*runs, "--out", str(out), "--labels", "low,high"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    _assert_png(out)
    assert legends == [["optim.lr=0.001", "optim.lr=0.003"], ["low", "high"]]


def test_report_one_run_and_errors(sweep, capsys, legends):
    run = sweep / "optim.lr=0.001"
    assert report_main([str(run)]) == 0  # one run: today's report, torn line dropped
    assert capsys.readouterr().out.strip() == str(run / "report.png")
    _assert_png(run / "report.png")
    assert legends == [["train loss", "valid loss"]]
    failed = sweep / "optim.lr=0.01"
    assert report_main([str(run), str(failed)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(failed / "metrics.jsonl") in err
    assert report_main([str(run), str(run), "--labels", "one"]) == 2
    assert "--labels has 1 names for 2 runs" in capsys.readouterr().err
    assert len(legends) == 1  # nothing drawn for the errors
