"""Unit tests of the console/metrics helpers: smoothing, ETA, the progress line, row rewriting,
the whole-model parameter count rule and when the loop evaluates (no processes launched)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pretrain.metrics import final_values, rows_until, scalar_items, truncate_metrics
from pretrain.parallel import DistInfo
from pretrain.progress import (
    StepMeter,
    console_line,
    eta_seconds,
    format_duration,
    per_second,
    progress_fields,
    window_mean,
)
from pretrain.train import _should_eval, counted_here


def test_window_mean_rate_and_eta() -> None:
    assert window_mean([]) is None
    assert window_mean([1.0, 2.0, 6.0]) == 3.0
    assert per_second(1000, 0.5) == 2000.0
    assert per_second(1000, None) is None and per_second(1000, 0.0) is None
    assert eta_seconds(2.5, 4) == 10.0
    assert eta_seconds(None, 4) is None
    assert eta_seconds(None, 0) == 0.0 and eta_seconds(3.0, -1) == 0.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0:00:00"),
        (59.6, "0:01:00"),
        (3 * 3600 + 25 * 60 + 7, "3:25:07"),
        (2 * 86400 + 3 * 3600 + 4 * 60 + 5, "2d 03:04:05"),
        (-5.0, "0:00:00"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_step_meter_drops_the_warmup_step_and_keeps_a_window() -> None:
    meter = StepMeter(window=3, start=100.0)
    assert meter.mean_train_s is None and meter.mean_wall_s is None
    meter.update(10.0, now=112.0)  # warm-up step: alone, it is the estimate
    assert (meter.mean_train_s, meter.mean_wall_s) == (10.0, 12.0)
    meter.update(1.0, now=113.5)  # a regular step replaces it
    assert (meter.mean_train_s, meter.mean_wall_s) == (1.0, 1.5)
    for train_s, now in ((2.0, 116.0), (3.0, 119.5), (6.0, 125.5)):
        meter.update(train_s, now=now)
    # window of 3: train 2, 3, 6; wall 2.5, 3.5, 6.0
    assert meter.mean_train_s == pytest.approx(11.0 / 3)
    assert meter.mean_wall_s == pytest.approx(4.0)
    assert meter.steps == 5
    assert meter.elapsed_s(now=130.0) == 30.0


def test_progress_fields_smooth_tokens_and_count_down() -> None:
    meter = StepMeter(start=0.0)
    for i, (train_s, now) in enumerate([(9.0, 10.0), (0.5, 11.0), (1.5, 13.0)]):
        meter.update(train_s, now=now)
        assert meter.steps == i + 1
    fields = progress_fields(meter, tokens_per_step=512, world_size=4, steps_left=6)
    assert fields["tokens_per_s_smoothed"] == pytest.approx(512 / 1.0)  # mean of 0.5 and 1.5
    assert fields["tokens_per_s_per_device"] == pytest.approx(512 / 1.0 / 4)
    assert fields["eta_s"] == pytest.approx(6 * 1.5)  # wall: 1.0 and 2.0
    assert fields["elapsed_s"] > 0
    assert progress_fields(meter, 512, 4, 0)["eta_s"] == 0.0


def _row(**extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "step": 7,
        "max_steps": 20,
        "loss": 5.4321,
        "lr": 3e-4,
        "grad_norm": 1.25,
        "tokens_per_s": 999.0,
        "tokens_per_s_smoothed": 12345.4,
        "tokens_per_s_per_device": 3086.3,
        "tflops_per_device": 0.0123,
        "mfu": 0.4,
        "data_s": 0.001,
        "fwd_bwd_s": 0.02,
        "optim_s": 0.003,
        "mem_gib": 1.5,
        "elapsed_s": 3725.0,
        "eta_s": 65.0,
        "skipped": False,
    }
    row.update(extra)
    return row


def test_console_line_has_every_field_on_one_line() -> None:
    line = console_line(_row())
    assert "\n" not in line
    assert line == (
        "step 7/20 | loss 5.432 | lr 3.000e-04 | grad_norm 1.25 | tok/s 12345 (3086/dev) | "
        "TFLOP/s/dev 0.0123 | MFU 40.0% | time data/fwd-bwd/opt 1/20/3 ms | mem 1.50 GiB | "
        "elapsed 1:02:05 ETA 0:01:05"
    )
    skipped = console_line(_row(skipped=True, overflow=True, mfu=None, grad_norm=None))
    assert "MFU" not in skipped and "grad_norm -" in skipped
    assert skipped.endswith("| SKIPPED (fp16 overflow)")


def _write(path: Path, rows: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def test_truncate_keeps_steps_up_to_the_resumed_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "loss": 10.0 - s} for s in range(1, 8)]  # a job killed after step 7
    _write(path, first, torn='{"step": 8, "lo')
    kept = truncate_metrics(path, 5)  # resumed from the checkpoint of step 5
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5]
    assert [json.loads(line) for line in path.read_text().splitlines()] == kept
    assert not list(tmp_path.glob("*.tmp"))
    before = path.stat().st_mtime_ns
    assert truncate_metrics(path, 5) == kept and path.stat().st_mtime_ns == before  # no rewrite
    assert truncate_metrics(path, 0) == [] and path.read_text() == ""  # a fresh run
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == []


def test_rows_until_merges_rows_of_one_step() -> None:
    rows = [{"step": 2, "loss": 1.0}, {"step": 1, "loss": 2.0}, {"step": 2, "valid_loss": 3.0}]
    assert rows_until(rows, 9) == [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.0, "valid_loss": 3.0},
    ]


def test_scalars_and_final_values() -> None:
    row = _row(valid_loss=4.0, valid_ppl=math.exp(4.0), loss_scale=None, consumed_tokens=512)
    scalars = scalar_items(row)
    assert "step" not in scalars and "max_steps" not in scalars and "skipped" not in scalars
    assert "loss_scale" not in scalars
    assert scalars["loss"] == 5.4321 and scalars["valid_loss"] == 4.0 and scalars["mfu"] == 0.4
    assert scalar_items({"step": 1, "loss": math.nan}) == {}
    assert final_values(row) == {
        "final_step": 7,
        "final_loss": 5.4321,
        "final_valid_loss": 4.0,
        "final_valid_ppl": math.exp(4.0),
        "final_consumed_tokens": 512,
    }
    assert final_values(None) == {} and final_values({"step": 3}) == {"final_step": 3}


def _dist(tp_rank: int = 0, dp_rank: int = 0) -> DistInfo:
    return DistInfo(0, 8, 0, torch.device("cpu"), "gloo", 2, tp_rank, 2, 0, None, 2, dp_rank)


def _param(**attrs: bool) -> torch.nn.Parameter:
    param = torch.nn.Parameter(torch.zeros(2))
    for name, value in attrs.items():
        setattr(param, name, value)
    return param


def test_each_parameter_is_counted_on_exactly_one_rank() -> None:
    sharded = _param(tensor_model_parallel=True)
    replicated = _param(tensor_model_parallel=False)  # a norm, a row-parallel bias
    tied_copy = _param(tensor_model_parallel=True, shared=True)  # last stage's embedding copy
    ranks = [_dist(tp, dp) for tp in (0, 1) for dp in (0, 1)]
    assert [counted_here(sharded, d) for d in ranks] == [True, False, True, False]
    assert [counted_here(replicated, d) for d in ranks] == [True, False, False, False]
    assert not any(counted_here(tied_copy, d) for d in ranks)
    assert counted_here(_param(), _dist()) and not counted_here(_param(), _dist(tp_rank=1))


def _ctx(step: int, interval: int, max_steps: int = 10) -> SimpleNamespace:
    cfg = SimpleNamespace(eval=SimpleNamespace(interval=interval))
    return SimpleNamespace(state=SimpleNamespace(step=step), cfg=cfg, max_steps=max_steps)


def test_evaluation_every_interval_and_once_at_the_end() -> None:
    assert [s for s in range(1, 11) if _should_eval(_ctx(s, 4))] == [4, 8, 10]
    assert [s for s in range(1, 11) if _should_eval(_ctx(s, 5))] == [5, 10]  # 10 once
    assert [s for s in range(1, 11) if _should_eval(_ctx(s, 0))] == [10]
