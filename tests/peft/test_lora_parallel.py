"""LoRA through real `torchrun -m pretrain` runs (gloo, CPU, fp32): layouts, resume, export.

Seven torchrun runs in all: a base (1 process, saved at the end), then LoRA on it:
a single-process reference (saves every 2 steps), TP=2 + sequence parallel, PP=2, DP=2 with the
distributed optimizer (saved at the end), and a
run killed mid-save at step 3 then resumed from step 2.

Tolerances (as tests/pretrain/test_parallel_equivalence.py): per-step loss within 1e-5
absolute, grad norm within 1e-5 relative, of the single-process reference; the resumed run
equals the reference bitwise (same layout, RNG restored). Export (TP=2 checkpoint resharded to
TP1): the merged HF model's logits and the PEFT adapter loaded with `peft` onto the exported
base give our model's logits within 1e-4 absolute (fp32; logits are O(1), measured ~3e-7).

Every run is supervised fine-tuning (objective=sft, loss-masked, packed examples with a
block-diagonal mask) on the instruction data of tests/sft/_data.py: with tests/sft (full-parameter
SFT at TP=2 + SP and DP=2), this covers SFT and LoRA at TP=2, TP=2 + SP, PP=2 and DP=2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint import layout
from pretrain.checkpoint.saver import CRASH_ENV
from tests._dist import REPO_ROOT, RunResult, read_metrics, run_pretrain, small_gpt_overrides

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

DATA_FIXTURE = "instruct_data"
"""The fixture giving the data directory of every run."""
OBJECTIVE = ["objective=sft", "data.split='90,5,5'"]
"""Objective overrides of every run (base and LoRA)."""

LOSS_ABS = 1e-5
GRAD_NORM_REL = 1e-5
LOGITS_ABS = 1e-4
STEPS = 4
LORA = ["peft=lora", "peft.rank=4", "peft.alpha=8", "optim.lr=0.01", "optim.warmup_steps=1"]


def _common(data_dir: Path) -> list[str]:
    return [
        *small_gpt_overrides(data_dir, STEPS, micro_batch_size=2),
        "train.seq_length=64",
        "model.num_attention_heads=4",
        *OBJECTIVE,
    ]


@pytest.fixture(scope="module")
def data_dir(request) -> Path:
    return Path(request.getfixturevalue(DATA_FIXTURE))


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory) -> Path:
    """The base checkpoint: 4 full-parameter steps, saved at the end."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    run_pretrain(1, [*_common(data_dir), "checkpoint.save_at_end=true"], run_dir)
    found = layout.read_latest(run_dir)
    assert found is not None
    return found


def _lora(data_dir: Path, base: Path, *extra: str) -> list[str]:
    load = [f"checkpoint.load='{base}'", "checkpoint.weights_only=true"]
    return [*_common(data_dir), *LORA, *load, *extra]


@pytest.fixture(scope="module")
def reference(data_dir, base, tmp_path_factory) -> RunResult:
    """LoRA, one process; saves at steps 2 and 4 (the resume test's uninterrupted run)."""
    run_dir = tmp_path_factory.mktemp("lora_ref") / "run"
    return run_pretrain(1, _lora(data_dir, base, "checkpoint.save_interval=2"), run_dir)


@pytest.fixture(scope="module")
def tp2_sp(data_dir, base, tmp_path_factory) -> RunResult:
    """LoRA at TP=2 with sequence parallelism, saved at the end (exported below)."""
    run_dir = tmp_path_factory.mktemp("lora_tp2sp") / "run"
    overrides = _lora(data_dir, base, "parallel=tp2_sp", "checkpoint.save_at_end=true")
    return run_pretrain(2, overrides, run_dir)


def assert_same_run(run: RunResult, ref: RunResult, what: str) -> None:
    losses, ref_losses = run.losses(), ref.losses()
    assert len(losses) == len(ref_losses) == STEPS, what
    for step, (a, b) in enumerate(zip(losses, ref_losses, strict=True), start=1):
        assert abs(a - b) <= LOSS_ABS, f"{what}: step {step} loss {a!r} != {b!r}"
    norms, ref_norms = run.by_step("grad_norm"), ref.by_step("grad_norm")
    for step, ref_norm in ref_norms.items():
        assert abs(norms[step] - ref_norm) <= GRAD_NORM_REL * ref_norm, (
            f"{what}: step {step} grad norm {norms[step]!r} != {ref_norm!r}"
        )
    # the adapters train: step 1 has B = 0 (A's grad is 0), so A first moves at step 2
    assert min(ref_norms[s] for s in range(2, STEPS + 1)) > 1000 * GRAD_NORM_REL


def test_lora_layouts_match_single_process(data_dir, base, reference, tp2_sp, tmp_path):
    assert "trainable of" in reference.output  # apply_peft's trainable/total line
    assert_same_run(tp2_sp, reference, "TP=2 + sequence parallel")
    zero1 = ["parallel=dp_zero1", "checkpoint.save_at_end=true"]  # + a distributed-optimizer save
    for name, nproc, overrides in (("PP=2", 2, ["parallel=pp2"]), ("DP=2 ZeRO-1", 2, zero1)):
        run = run_pretrain(nproc, _lora(data_dir, base, *overrides), tmp_path / name)
        assert_same_run(run, reference, name)


def test_lora_resume_after_kill_is_exact(data_dir, base, reference, tmp_path):
    run_dir = tmp_path / "run"
    overrides = _lora(data_dir, base, "checkpoint.save_interval=2")
    killed = run_pretrain(1, overrides, run_dir, env={CRASH_ENV: "4"}, check=False)
    assert killed.returncode != 0 and layout.read_latest(run_dir).name == "iter_0000002"
    resumed = run_pretrain(1, overrides, run_dir)
    ref = {r["step"]: r for r in reference.records if "loss" in r}
    rows = {r["step"]: r for r in read_metrics(run_dir) if "loss" in r}
    for step in (3, 4):
        assert rows[step]["loss"] == ref[step]["loss"], f"step {step}"
        assert rows[step]["grad_norm"] == ref[step]["grad_norm"], f"step {step}"
    assert "loaded the LoRA base" in resumed.output
    saved = json.loads((layout.read_latest(run_dir) / "meta.json").read_text())
    assert saved["peft"]["base"]["path"] == str(base.resolve())


def _tensor_keys(ckpt: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_lora_checkpoint_and_export(base, tp2_sp, tmp_path):
    ckpt = layout.read_latest(tp2_sp.run_dir)
    keys = _tensor_keys(ckpt)
    model_keys = {k for k in keys if not k.startswith(("optimizer.", "rng_state."))}
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys
    assert _size(ckpt) < _size(base) / 2  # adapters (+ their Adam state) only
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("_compare_peft.py")),
            str(ckpt),
            str(base),
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["adapter_effect"] > 100 * LOGITS_ABS  # the adapters change the logits
    assert result["merged_vs_ours"] < LOGITS_ABS, result
    assert result["peft_vs_ours"] < LOGITS_ABS, result
    assert result["adapter_files"] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "export_info.json",
    ]
    # generate from the LoRA checkpoint (base + adapters) = from its merged HF export (greedy)
    texts = [_generate(f"checkpoint={ckpt}"), _generate(f"hf={tmp_path / 'merged_hf'}")]
    assert texts[0] == texts[1] and len(texts[0]) > len("def f(x):\n")


def _generate(source: str) -> str:
    args = [source, "temperature=0", "max_new_tokens=8", "prompt=def f(x):\n"]
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.generate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_lora_base_must_be_unchanged(base, tp2_sp, tmp_path):
    from pretrain.checkpoint.adapters import check_base
    from pretrain.checkpoint.errors import CheckpointError

    ckpt = layout.read_latest(tp2_sp.run_dir)
    record = json.loads((ckpt / "meta.json").read_text())["peft"]
    assert record["type"] == "lora" and record["rank"] == 4 and record["alpha"] == 8.0
    assert Path(check_base(record, ckpt)) == base.resolve()
    changed = {**record, "base": {**record["base"], "sha256": "0" * 64}}
    with pytest.raises(CheckpointError, match=re.escape(f"{base.resolve()} changed")):
        check_base(changed, ckpt)
    gone = {**record, "base": {**record["base"], "path": str(tmp_path / "moved")}}
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'moved'}, which is gone")):
        check_base(gone, ckpt)
