"""objective=llava through real `torchrun -m pretrain` runs: layouts, exact resume, checkpoints.

One single-process reference (4 steps of a LLaVAModel: 2-layer hidden-64 ViT on 32x32 images
in 8x8 patches, MLP projector, 4-layer hidden-64 GPT; 4 micro-batches of 2; validation on the
held-out image-text dir every 2 steps) is shared by the module. The layouts TP=2, PP=2,
PP=2 x VPP=2 and DP=2 with the distributed optimizer must give the same per-step train loss,
caption-token count, grad norm and validation loss; tolerances are
tests/pretrain/test_parallel_equivalence.py's (loss 1e-5 absolute, grad norm 1e-5 relative).
Resume after a SIGKILL is bitwise exact (fp32, CPU), data position included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.meta import check_compatible, read_meta
from pretrain.checkpoint.saver import CRASH_ENV
from pretrain.data_checks import read_manifest
from tests._dist import RunResult, run_pretrain
from tests.pretrain._plain import run_plain
from tests.pretrain.test_parallel_equivalence import GRAD_NORM_REL, LOSS_ABS
from tests.sft._inproc import compose

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS = 4
GLOBAL_BATCH = 8


def llava_overrides(data: Path, valid: Path | None, *extra: str) -> list[str]:
    """The tiny LLaVA run of this module (seq 32 text positions + 16 image embeddings)."""
    return [
        "objective=llava",
        f"data.paths=[{data}]",
        *([f"data.valid_paths=[{valid}]"] if valid else []),
        f"train.max_steps={STEPS}",
        "train.micro_batch_size=2",
        f"train.global_batch_size={GLOBAL_BATCH}",
        "train.seq_length=32",
        "model.num_layers=4",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        "model.num_attention_heads=4",
        "vision.num_layers=2",
        "vision.hidden_size=64",
        "vision.num_attention_heads=4",
        "optim.warmup_steps=1",
        "eval.interval=2",
        "eval.iters=1",
        *extra,
    ]


def _rows(run: RunResult) -> dict[int, dict]:
    return {r["step"]: r for r in run.records if "loss" in r}


def assert_same_run(run: RunResult, ref: RunResult, what: str) -> list[float]:
    """Per-step equality within the tolerances; returns the |loss diffs| per step."""
    rows, ref_rows = _rows(run), _rows(ref)
    assert sorted(rows) == sorted(ref_rows) == list(range(1, STEPS + 1)), what
    diffs = []
    for step, want in ref_rows.items():
        got = rows[step]
        assert got["target_tokens"] == want["target_tokens"], f"{what}: step {step} tokens"
        diffs.append(abs(got["loss"] - want["loss"]))
        assert diffs[-1] <= LOSS_ABS, f"{what}: step {step} loss {got['loss']} != {want['loss']}"
        assert abs(got["grad_norm"] - want["grad_norm"]) <= GRAD_NORM_REL * want["grad_norm"], (
            f"{what}: step {step} grad norm {got['grad_norm']} != {want['grad_norm']}"
        )
        assert got["consumed_samples"] == want["consumed_samples"] == step * GLOBAL_BATCH
        if "valid_loss" in want:
            assert abs(got["valid_loss"] - want["valid_loss"]) <= LOSS_ABS, f"{what}: {step}"
    losses = [ref_rows[s]["loss"] for s in sorted(ref_rows)]
    assert abs(losses[-1] - losses[0]) > 1000 * LOSS_ABS  # the runs train
    return diffs


@pytest.fixture(scope="module")
def reference(image_text_data, image_text_heldout, tmp_path_factory) -> RunResult:
    out = tmp_path_factory.mktemp("llava_ref") / "run"
    extra = ("checkpoint.save_at_end=true",)
    return run_pretrain(1, llava_overrides(image_text_data, image_text_heldout, *extra), out)


def test_reference_logs_caption_loss_and_checkpoint(reference: RunResult):
    rows = _rows(reference)
    for step, row in rows.items():
        assert math.isfinite(row["loss"]) and 0 < row["loss"] < 7.0, row
        # the caption tokens (+ eod) of 8 samples: between 8 x 2 and 8 x 31
        assert 16 <= row["target_tokens"] <= 8 * 31, row
        assert ("valid_loss" in row) == (step % 2 == 0), row
    meta = json.loads((reference.run_dir / f"iter_{STEPS:07d}" / "meta.json").read_text())
    assert meta["config"]["objective"]["name"] == "llava"
    vision = meta["config"]["vision"]  # "*token*" keys that are no secrets are kept
    assert vision["image_token"] == "<image>" and vision["drop_class_token"] is True
    assert "objective llava: 600 train / 64 valid samples" in reference.output


LAYOUTS = {
    "TP=2": ["parallel=tp2"],
    "PP=2": ["parallel=pp2"],
    "PP=2 x VPP=2": ["parallel=pp2_vpp2"],
    "DP=2 + distributed optimizer": ["parallel=dp_zero1"],
}


def test_layouts_match_single_process(image_text_data, image_text_heldout, reference, tmp_path):
    measured = {}
    for index, (name, overrides) in enumerate(LAYOUTS.items()):
        args = llava_overrides(image_text_data, image_text_heldout, *overrides)
        run = run_pretrain(2, args, tmp_path / f"run{index}")
        measured[name] = max(assert_same_run(run, reference, name))
    print("max |loss - single| per layout:", measured)


def test_killed_and_resumed_equals_uninterrupted(
    image_text_data, image_text_heldout, reference, tmp_path
):
    """SIGKILL (every rank) in the middle of the save of step 3; rerunning the same command
    resumes from step 2 and reproduces the reference bitwise, data position included."""
    run_dir = tmp_path / "resume"
    args = llava_overrides(image_text_data, image_text_heldout, "checkpoint.save_interval=1")
    crash = run_pretrain(1, args, run_dir, check=False, env={CRASH_ENV: "3"})
    assert crash.returncode != 0
    assert (run_dir / "iter_0000003.tmp-incomplete").is_dir()  # the torn save
    assert (run_dir / "latest").read_text().strip() == "iter_0000002"
    assert [r["step"] for r in crash.records if "loss" in r][:2] == [1, 2]
    resumed = run_pretrain(1, args, run_dir)
    assert "iter_0000002" in resumed.output and "16 samples consumed" in resumed.output
    rows, ref_rows = _rows(resumed), _rows(reference)
    assert sorted(rows) == list(range(1, STEPS + 1))
    for step, row in rows.items():
        for key in ("loss", "grad_norm", "target_tokens", "consumed_samples", "valid_loss"):
            assert row.get(key) == ref_rows[step].get(key), f"step {step} {key}"


def test_gpt_and_llava_checkpoints_refuse_each_other(
    prepared_data, image_text_data, image_text_heldout, reference, tmp_path
):
    """objective=llava never resumes a GPT run.dir, nor objective=lm a LLaVA one (exit 2)."""
    lm_dir = tmp_path / "lm"
    run_pretrain(
        1,
        [f"data.paths=[{prepared_data}]", "train.max_steps=1", "checkpoint.save_at_end=true"]
        + ["model.num_layers=4", "model.hidden_size=64", "model.ffn_hidden_size=256"]
        + ["train.seq_length=32", "train.micro_batch_size=8", "train.global_batch_size=8"],
        lm_dir,
    )
    llava = run_plain(llava_overrides(image_text_data, None), lm_dir)
    assert llava.returncode == 2, llava.stderr[-3000:]
    for text in ("objective=lm", "objective=llava", "vision.language_checkpoint"):
        assert text in llava.stderr, llava.stderr[-2000:]
    assert "Traceback" not in llava.stderr

    ckpt = reference.run_dir / f"iter_{STEPS:07d}"
    lm_cfg = compose([f"data.paths=[{prepared_data}]", "model.num_layers=4"])
    manifests = [read_manifest(image_text_data)]
    with pytest.raises(CheckpointError, match="objective=llava .LLAVA.*objective=lm .GPT"):
        check_compatible(read_meta(ckpt), ckpt, lm_cfg, manifests, 512, weights_only=True)
    # another ViT shape is refused too, naming the key
    other = compose(llava_overrides(image_text_data, None, "vision.hidden_size=32"))
    with pytest.raises(CheckpointError, match="vision.hidden_size: checkpoint has 64"):
        check_compatible(read_meta(ckpt), ckpt, other, manifests, 512, weights_only=True)
