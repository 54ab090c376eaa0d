"""A complete small run at TP=2: console, metrics.jsonl, eval, sample, report, W&B offline.

The run: 6 steps, a row every 2 steps, evaluation every 3 steps and at the end (step 6 is both:
it must evaluate once), 2 ranks, global batch 8 x 64 tokens.
"""

from __future__ import annotations

import math
import re

import pytest

from pretrain.report import main as report_main
from tests._dist import run_pretrain

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REQUIRED = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "consumed_samples",
    "consumed_tokens",
    "tflops_per_device",
    "data_s",
    "fwd_bwd_s",
    "optim_s",
    "mem_gib",
    "skipped",
    "tokens_per_s_smoothed",
    "tokens_per_s_per_device",
    "elapsed_s",
    "eta_s",
}
TOKENS_PER_STEP = 8 * 64


def test_tp2_run_writes_every_output(prepared_data, tmp_path):
    run_dir = tmp_path / "demo"
    run = run_pretrain(
        2,
        [
            f"data.paths=[{prepared_data}]",
            "parallel=tp2",
            "train.max_steps=6",
            "train.log_interval=2",
            "eval.interval=3",
            "eval.iters=1",
            "model.num_layers=2",
            "logging.wandb.mode=offline",
            "logging.report=true",
            "sample.enabled=true",
            "sample.max_new_tokens=5",
            "sample.prompt='import '",
            "optim.warmup_steps=2",
        ],
        run_dir,
    )
    train = [r for r in run.records if "loss" in r]
    assert train == run.records  # one row per logged step: evaluations are merged into it
    assert [r["step"] for r in train] == [2, 3, 4, 6]  # log_interval 2, plus the eval step 3
    for record in train:
        assert record.keys() >= REQUIRED
        assert record["consumed_tokens"] == record["step"] * TOKENS_PER_STEP
        assert record["tokens_per_s"] > 0 and math.isfinite(record["loss"])
        assert record["mfu"] is None  # CPU: no known peak
        per_device = record["tokens_per_s_smoothed"] / 2  # world size 2
        assert record["tokens_per_s_per_device"] == pytest.approx(per_device, rel=1e-12)
    _assert_smoothing(train)
    valid = [r for r in run.records if r.get("valid_loss") is not None]
    assert [r["step"] for r in valid] == [3, 6]  # every eval.interval, and at the end
    assert run.output.count("step 6 | valid loss") == 1  # the final and interval eval: once
    assert (
        abs(valid[0]["valid_ppl"] - math.exp(valid[0]["valid_loss"])) < 1e-6 * valid[0]["valid_ppl"]
    )
    # warmup 2 then cosine: LR rises then falls
    lrs = {r["step"]: r["lr"] for r in train}
    assert lrs[2] > 0 and lrs[6] < lrs[3]
    # rank-0 console line with the step-time split and a sample decoded by the tokenizer
    line = re.search(
        r"step 4/6 \| loss [\d.]+ \| lr .* \| tok/s (\d+) \((\d+)/dev\) \| TFLOP/s/dev .* \| "
        r"time data/fwd-bwd/opt \d+/\d+/\d+ ms \| mem [\d.]+ GiB \| "
        r"elapsed \d+:\d\d:\d\d ETA (\d+):(\d\d):(\d\d)$",
        run.output,
        re.MULTILINE,
    )
    assert line, run.output[-3000:]
    step4 = train[2]
    assert int(line[1]) == round(step4["tokens_per_s_smoothed"])
    assert int(line[2]) == round(step4["tokens_per_s_per_device"])
    eta = 3600 * int(line[3]) + 60 * int(line[4]) + int(line[5])
    assert eta == round(step4["eta_s"])
    sample = (run_dir / "sample.txt").read_text()
    assert sample.startswith("import ") and len(sample) > len("import ")
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # the report CLI redraws from metrics.jsonl
    (run_dir / "report.png").unlink()
    assert report_main([str(run_dir)]) == 0
    assert (run_dir / "report.png").stat().st_size > 10_000
    assert report_main([str(tmp_path / "nowhere")]) == 2


def _assert_smoothing(rows: list[dict]) -> None:
    """Window mean of the step times, the first (warm-up) step left out; ETA to the last step."""
    by_step = {r["step"]: r for r in rows}
    # step 2: only step 2 is in the window (step 1 left it)
    assert by_step[2]["tokens_per_s_smoothed"] == pytest.approx(by_step[2]["tokens_per_s"])
    mean_step_s = sum(by_step[s]["step_s"] for s in (2, 3, 4)) / 3
    assert by_step[4]["tokens_per_s_smoothed"] == pytest.approx(TOKENS_PER_STEP / mean_step_s)
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert elapsed[-1] >= sum(r["step_s"] for r in rows)
    assert by_step[6]["eta_s"] == 0.0
    # ETA = steps left (to 6) x mean wall time between step ends (w2, w3, w4 in the window):
    # recover w3 and w4 from the ETAs and compare them with the elapsed time between the rows
    eta2, eta3, eta4 = (by_step[s]["eta_s"] for s in (2, 3, 4))
    w2 = eta2 / 4
    w3 = 2 * (eta3 / 3) - w2
    w4 = 3 * (eta4 / 2) - 2 * (eta3 / 3)
    assert w2 > 0
    assert w3 == pytest.approx(by_step[3]["elapsed_s"] - by_step[2]["elapsed_s"], abs=0.01)
    assert w4 == pytest.approx(by_step[4]["elapsed_s"] - by_step[3]["elapsed_s"], abs=0.01)
