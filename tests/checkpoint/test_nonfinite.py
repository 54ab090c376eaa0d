"""NaN/Inf never reaches `latest`: non-finite config values are refused (exit 2), a model whose
update made its weights non-finite is not saved (exit 65, the last good checkpoint stays
`latest` and is not rotated away), and a checkpoint holding NaNs is never resumed from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.checkpoint import verify
from pretrain.checkpoint.errors import EXIT_NON_FINITE_WEIGHTS
from tests._dist import read_metrics
from tests.checkpoint._common import single_process, small_overrides
from tests.checkpoint._tamper import copy_run, nan_weights

pytestmark = pytest.mark.distributed


def test_non_finite_config_values_exit_2(prepared_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = single_process(
        small_overrides(prepared_data, 4, "optim.lr=inf", "optim.adam_eps=inf"), run
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "optim.lr=inf, optim.adam_eps=inf: must be a finite number" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run.exists()  # refused before anything is written


def test_diverged_weights_are_never_saved(prepared_data: Path, tmp_path: Path) -> None:
    # fp16 model weights overflow to inf after the step-2 update (lr 5e5 > fp16's 65504) while
    # its loss and gradient norm were finite: the update is applied, the save must refuse.
    run = tmp_path / "run"
    overrides = small_overrides(
        prepared_data,
        4,
        "precision=fp16",
        "optim.loss_scale=1",
        "optim.lr=1e6",
        "optim.min_lr=0",
        "optim.warmup_steps=2",  # step 1 trains at lr 0: a good checkpoint first
        "checkpoint.save_interval=1",
        "checkpoint.keep_last=1",
        "train.max_skipped_steps=10",
    )
    proc = single_process(overrides, run)
    assert proc.returncode == EXIT_NON_FINITE_WEIGHTS == 65, proc.stderr[-3000:]
    assert "the model's weights are not finite after step 2" in proc.stderr
    assert f"`latest` keeps {run}/iter_0000001" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000001"]  # nothing torn either
    assert (run / "latest").read_text().strip() == "iter_0000001"
    verify.inspect(run / "iter_0000001")  # intact: checksums and structure verify


def test_nan_checkpoint_is_not_resumed(
    saved_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    run = copy_run(saved_run, tmp_path / "run")
    key = nan_weights(run / "iter_0000006")  # checksums rewritten: only the values are wrong
    proc = single_process(small_overrides(prepared_data, 8, "checkpoint.keep_last=2"), run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"damaged checkpoint {run}/iter_0000006: non-finite values (NaN/Inf) in" in out
    assert key in out
    assert f"loaded {run}/iter_0000004" in out
    assert (run / "iter_0000006.damaged" / "checksums.json").is_file()  # kept, set aside
    assert sorted(p.name for p in run.glob("iter_*")) == [
        "iter_0000006",
        "iter_0000006.damaged",
        "iter_0000008",
    ]
    steps = [r for r in read_metrics(run) if r.get("step", 0) > 6 and "loss" in r]
    assert steps and all(not r["skipped"] for r in steps)  # trained on finite weights


def test_explicit_load_of_a_nan_checkpoint_exit_2(
    saved_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    source = copy_run(saved_run, tmp_path / "source")
    nan_weights(source / "iter_0000004")
    fresh = tmp_path / "fresh"
    proc = single_process(
        small_overrides(prepared_data, 6, f"checkpoint.load={source}/iter_0000004"), fresh
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pretrain:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f"damaged checkpoint {source}/iter_0000004: non-finite values" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not list(fresh.glob("iter_*"))
    assert json.loads((source / "iter_0000004" / "checksums.json").read_text())["files"]
