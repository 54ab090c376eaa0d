"""objective=mlm through real `torchrun -m pretrain` runs: layouts, exact resume, bf16, metrics.

One single-process reference (4 steps of a 2-layer hidden-64 BertModel, 4 micro-batches of 2,
evaluation every 2 steps, W&B offline, a fill-mask sample, a checkpoint at the end) is shared
by every test of this module.

Tolerances (as tests/pretrain/test_parallel_equivalence.py): per-step train and validation
loss within 1e-5 absolute, grad norm within 1e-5 relative; the masked-token counts are equal;
the accuracies may differ by at most one masked prediction (an argmax between two logits that
differ by float rounding could flip; measured: equal). Exact resume is bitwise (fp32, CPU).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.meta import check_compatible, read_meta
from pretrain.data_checks import read_manifest
from tests._dist import RunResult, run_pretrain
from tests.pretrain._plain import run_plain
from tests.sft._inproc import compose

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LOSS_ABS = 1e-5
GRAD_NORM_REL = 1e-5
STEPS = 4
PROMPT = "sample.prompt='def <mask>(args):'"


def _base(data: Path, *extra: str) -> list[str]:
    return [
        "objective=mlm",
        f"data.paths=[{data}]",
        f"train.max_steps={STEPS}",
        "train.micro_batch_size=2",
        "train.global_batch_size=8",
        "train.seq_length=64",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        "model.num_attention_heads=4",
        "optim.warmup_steps=1",
        "eval.interval=2",
        "eval.iters=1",
        "sample.enabled=true",
        PROMPT,
        *extra,
    ]


def _rows(run: RunResult) -> dict[int, dict]:
    return {r["step"]: r for r in run.records}


def _close_accuracy(a: float, b: float, masked: int) -> bool:
    return abs(a - b) * masked <= 1 + 1e-9


def assert_same_run(run: RunResult, ref: RunResult, what: str) -> None:
    rows, ref_rows = _rows(run), _rows(ref)
    assert sorted(rows) == sorted(ref_rows) == list(range(1, STEPS + 1)), what
    for step, want in ref_rows.items():
        got = rows[step]
        assert got["masked_tokens"] == want["masked_tokens"], f"{what}: step {step} tokens"
        assert abs(got["loss"] - want["loss"]) <= LOSS_ABS, f"{what}: step {step} loss"
        assert _close_accuracy(got["accuracy"], want["accuracy"], want["masked_tokens"]), (
            f"{what}: step {step} accuracy {got['accuracy']} != {want['accuracy']}"
        )
        assert abs(got["grad_norm"] - want["grad_norm"]) <= GRAD_NORM_REL * want["grad_norm"]
        if "valid_loss" in want:
            assert abs(got["valid_loss"] - want["valid_loss"]) <= LOSS_ABS, f"{what}: {step}"
            assert abs(got["valid_accuracy"] - want["valid_accuracy"]) <= 0.05, what
    # the runs must actually train: the loss moves by far more than the tolerance
    losses = ref.losses()
    assert abs(losses[-1] - losses[0]) > 1000 * LOSS_ABS


@pytest.fixture(scope="module")
def reference(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("mlm_ref") / "run"
    extra = ("logging.wandb.mode=offline", "checkpoint.save_at_end=true")
    return run_pretrain(1, _base(prepared_data, *extra), out)


def test_reference_logs_accuracy_sample_checkpoint_and_wandb(reference: RunResult):
    rows = _rows(reference)
    for step, row in rows.items():
        assert 0 <= row["accuracy"] <= 1 and row["masked_tokens"] > 0, row
        assert math.isfinite(row["loss"]) and "target_tokens" not in row
        # ~15% of the 8 x 62 window tokens are selected
        assert 0.08 * 8 * 62 < row["masked_tokens"] < 0.22 * 8 * 62, row
        assert ("valid_accuracy" in row) == (step % 2 == 0), row
    assert 0 <= rows[STEPS]["valid_accuracy"] <= 1 and math.isfinite(rows[STEPS]["valid_loss"])
    run_dir = reference.run_dir
    assert "| accuracy " in reference.output and "| valid accuracy " in reference.output
    sample = (run_dir / "sample.txt").read_text()
    assert sample.startswith("def ") and sample.rstrip().endswith("]") and "<mask>" not in sample
    meta = json.loads((run_dir / f"iter_{STEPS:07d}" / "meta.json").read_text())
    assert meta["config"]["objective"]["name"] == "mlm"
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((run_dir / "wandb").glob("*"))


LAYOUTS = {
    "TP=2": ["parallel=tp2"],
    "TP=2 + sequence parallel": ["parallel=tp2_sp"],
    "PP=2": ["parallel=pp2"],
    "DP=2": ["parallel=single"],
}


def test_layouts_match_single_process(prepared_data, reference, tmp_path):
    want = (reference.run_dir / "sample.txt").read_text()
    for index, (name, overrides) in enumerate(LAYOUTS.items()):
        run = run_pretrain(2, _base(prepared_data, *overrides), tmp_path / f"run{index}")
        assert_same_run(run, reference, name)
        assert (run.run_dir / "sample.txt").read_text() == want, f"{name}: sample differs"


def test_interrupted_and_resumed_equals_uninterrupted(prepared_data, reference, tmp_path):
    run_dir = tmp_path / "resume"
    stop = ("train.stop_at_step=2", "checkpoint.save_at_end=true")
    first = run_pretrain(1, _base(prepared_data, *stop), run_dir)
    assert [r["step"] for r in first.records] == [1, 2]
    assert (run_dir / "latest").read_text().strip() == "iter_0000002"
    resumed = run_pretrain(1, _base(prepared_data), run_dir)
    assert "iter_0000002" in resumed.output
    rows, ref_rows = _rows(resumed), _rows(reference)
    assert sorted(rows) == list(range(1, STEPS + 1))
    keys = ("loss", "grad_norm", "accuracy", "masked_tokens", "valid_loss", "valid_accuracy")
    for step, row in rows.items():
        for key in keys:
            assert row.get(key) == ref_rows[step].get(key), f"step {step} {key}"


def test_bf16_smoke(prepared_data, tmp_path):
    run = run_pretrain(1, _base(prepared_data, "precision=bf16", "train.max_steps=2"), tmp_path)
    assert len(run.losses()) == 2 and all(math.isfinite(x) for x in run.losses())
    assert all(0 <= r["accuracy"] <= 1 for r in run.records if "loss" in r)


def test_checkpoints_of_the_other_model_are_refused(prepared_data, reference, tmp_path):
    """objective=mlm never resumes a GPT run.dir, nor objective=lm a BERT one (exit 2)."""
    lm_dir = tmp_path / "lm"
    run_pretrain(
        1,
        [f"data.paths=[{prepared_data}]", "train.max_steps=1", "checkpoint.save_at_end=true"]
        + ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=256"],
        lm_dir,
    )
    mlm = run_plain(_base(prepared_data, "sample.enabled=false"), lm_dir)
    assert mlm.returncode == 2, mlm.stderr[-3000:]
    assert "objective=lm" in mlm.stderr and "objective=mlm" in mlm.stderr, mlm.stderr[-2000:]
    assert "Traceback" not in mlm.stderr

    # and the other way round (checked on the reference's meta.json, as the loader does)
    ckpt = reference.run_dir / f"iter_{STEPS:07d}"
    lm_cfg = compose([f"data.paths=[{prepared_data}]", "model.num_layers=2"])
    manifests = [read_manifest(prepared_data)]
    with pytest.raises(CheckpointError, match="objective=mlm .BERT.*objective=lm .GPT"):
        check_compatible(read_meta(ckpt), ckpt, lm_cfg, manifests, 512, weights_only=True)
