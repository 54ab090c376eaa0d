"""Mixed precision and skipped steps, in real training processes (gloo, CPU)."""

from __future__ import annotations

import math

import pytest

from tests._dist import run_pretrain, small_gpt_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _base(data_dir, steps: int) -> list[str]:
    return [*small_gpt_overrides(data_dir, steps), "optim.lr=3e-3"]


def test_bf16_trains_and_a_nan_step_is_skipped(prepared_data, tmp_path):
    run = run_pretrain(
        1,
        _base(prepared_data, 10) + ["precision=bf16"],
        tmp_path / "bf16",
        env={"PRETRAIN_INJECT_NAN_AT_STEP": "4"},
    )
    records = {r["step"]: r for r in run.records}
    assert len(records) == 10
    # step 4: NaN loss -> update skipped, not an fp16 overflow; the next step trains again
    assert records[4]["skipped"] is True and records[4]["overflow"] is False
    assert math.isnan(records[4]["loss"])
    assert all(records[s]["skipped"] is False for s in records if s != 4)
    assert "step 4 skipped: non-finite loss" in run.output
    # bf16 trains: mean loss of the last 3 steps at least 0.3 nats below the first step (~6.2)
    last = [records[s]["loss"] for s in (8, 9, 10)]
    assert sum(last) / 3 < records[1]["loss"] - 0.3, [r["loss"] for r in run.records]


def test_fp16_dynamic_loss_scaling_skips_overflowing_steps(prepared_data, tmp_path):
    # a loss scale of 2^40 overflows fp16 gradients: megatron's scaler must skip those steps,
    # halve the scale each time (hysteresis 1) until the gradients fit, then train normally
    overrides = ["precision=fp16", "optim.initial_loss_scale=1099511627776", "optim.hysteresis=1"]
    run = run_pretrain(1, _base(prepared_data, 40) + overrides, tmp_path / "fp16")
    records = run.records
    skipped = [r for r in records if r["skipped"]]
    assert records[0]["skipped"] and records[0]["overflow"] and records[0]["grad_norm"] is None
    assert 1 <= len(skipped) < len(records)
    first_ok = next(i for i, r in enumerate(records) if not r["skipped"])
    # every overflow halves the scale exactly (records show the scale after the step)
    assert records[0]["loss_scale"] == 2.0**39
    for before, after in zip(records[: first_ok - 1], records[1:first_ok], strict=True):
        assert after["loss_scale"] == before["loss_scale"] / 2
    assert records[first_ok]["loss_scale"] == records[first_ok - 1]["loss_scale"]
    # skipped steps do not advance the LR schedule: the first good step runs at the LR of step 1
    assert records[first_ok]["lr"] == records[0]["lr"]
    good = [r for r in records if not r["skipped"]]
    assert all(math.isfinite(r["grad_norm"]) for r in good)
    assert good[-1]["loss"] < good[0]["loss"] - 0.2


def test_too_many_consecutive_nan_steps_abort(prepared_data, tmp_path):
    run = run_pretrain(
        1,
        _base(prepared_data, 6) + ["train.max_skipped_steps=2"],
        tmp_path / "diverge",
        env={"PRETRAIN_INJECT_NAN_AT_STEP": "2,3"},
        check=False,
    )
    assert run.returncode != 0
    assert "2 consecutive steps had a non-finite loss or gradient" in run.output
    assert "train.max_skipped_steps=2" in run.output
    assert [r["step"] for r in run.records] == [1, 2]


def test_full_activation_recompute_with_dropout_is_exact(prepared_data, tmp_path):
    # recompute replays dropout through megatron's RNG tracker (the CPU tracker of
    # pretrain.compat): the losses must be bitwise equal to the run that stores activations
    base = _base(prepared_data, 3) + ["model.hidden_dropout=0.1", "model.attention_dropout=0.1"]
    plain = run_pretrain(1, base, tmp_path / "plain")
    full = run_pretrain(1, base + ["train.activation_recompute=full"], tmp_path / "full")
    assert plain.losses() == full.losses()
    assert len(set(plain.losses())) == 3
