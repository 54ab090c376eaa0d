"""A complete small run at TP=2: console, metrics.jsonl, eval, sample, report, W&B offline."""

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
}


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
    assert [r["step"] for r in train] == [2, 3, 4, 6]  # log_interval 2, plus the eval step 3
    for record in train:
        assert record.keys() >= REQUIRED
        assert record["consumed_tokens"] == record["step"] * 8 * 64
        assert record["tokens_per_s"] > 0 and math.isfinite(record["loss"])
        assert record["mfu"] is None  # CPU: no known peak
    valid = [r for r in run.records if r.get("valid_loss") is not None]
    assert [r["step"] for r in valid] == [3, 6]  # every eval.interval, and at the end
    assert (
        abs(valid[0]["valid_ppl"] - math.exp(valid[0]["valid_loss"])) < 1e-6 * valid[0]["valid_ppl"]
    )
    # warmup 2 then cosine: LR rises then falls
    lrs = {r["step"]: r["lr"] for r in train}
    assert lrs[2] > 0 and lrs[6] < lrs[3]
    # rank-0 console line with the step-time split and a sample decoded by the tokenizer
    line = re.search(
        r"step 4/6 \| loss [\d.]+ \| lr .* \| tok/s \d+ \| TFLOP/s/dev .* \| "
        r"time data/fwd-bwd/opt \d+/\d+/\d+ ms \| mem [\d.]+ GiB",
        run.output,
    )
    assert line, run.output[-3000:]
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
