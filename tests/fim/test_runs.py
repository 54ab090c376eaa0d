"""FIM training through real `torchrun -m pretrain` runs (gloo on the CPU), data.fim.rate=0.5.

One single-process reference (6 steps, 2 layers, hidden 64, level=document, an infill sample at
the end) is shared by every assertion: TP=2 and PP=2 give its per-step losses and grad norms
(tolerances of tests/pretrain/test_parallel_equivalence.py: 1e-5 absolute loss, 1e-5 relative
grad norm) and the same greedy infill; a run stopped at step 3 (train.stop_at_step, checkpoint)
and resumed to 6 gives its numbers bitwise (exact resume). The end-of-run sample infills
between sample.prompt and sample.suffix (structure only, not quality).
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from pretrain.config import SampleConfig
from tests._dist import RunResult, run_pretrain
from tests.checkpoint._common import export_hf, train_records
from tests.pretrain.test_generate import _tool
from tests.pretrain.test_parallel_equivalence import GRAD_NORM_REL, LOSS_ABS

STEPS = 6
SUFFIX = "    return args"
INFILL = [
    "sample.enabled=true",
    "sample.max_new_tokens=4",
    "sample.temperature=0",
    f"sample.suffix='{SUFFIX}'",
]

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _overrides(data: Path, *extra: str) -> list[str]:
    return [
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
        "data.fim.rate=0.5",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    overrides = _overrides(prepared_data, *INFILL, "checkpoint.save_at_end=true")
    run = run_pretrain(1, overrides, tmp_path_factory.mktemp("fim") / "ref")
    assert re.search(
        r"data\.fim: \S+shard_00000: [1-9]\d* of \d+ documents transformed", run.output
    )
    return run


def _assert_close(run: RunResult, ref: RunResult, what: str) -> None:
    losses, ref_losses = run.losses(), ref.losses()
    assert len(losses) == len(ref_losses) == STEPS, what
    for step, (a, b) in enumerate(zip(losses, ref_losses, strict=True), start=1):
        assert abs(a - b) <= LOSS_ABS, f"{what}: step {step} loss {a!r} != {b!r}"
    norms = run.by_step("grad_norm")
    for step, ref_norm in ref.by_step("grad_norm").items():
        assert abs(norms[step] - ref_norm) <= GRAD_NORM_REL * ref_norm, (what, step)
    assert abs(ref_losses[-1] - ref_losses[0]) > 1000 * LOSS_ABS  # it trains


def test_infill_sample_structure(reference: RunResult) -> None:
    prompt = SampleConfig.prompt
    text = (reference.run_dir / "sample.txt").read_text(encoding="utf-8")
    assert text.startswith(prompt) and text.endswith(SUFFIX + "\n"), text
    found = re.search(
        r"infill token ids: prompt (\[[^\]]*\]) \+ new (\[[^\]]*\])", reference.output
    )
    assert found, reference.output[-3000:]
    ids, new = ast.literal_eval(found.group(1)), ast.literal_eval(found.group(2))
    # <fim_prefix>=4 prefix <fim_suffix>=6 suffix <fim_middle>=5 (tokenizer.reserved_tokens order)
    assert ids[0] == 4 and ids[-1] == 5 and ids.count(6) == 1 and 0 < len(new) <= 4
    assert "infill middle (" in reference.output


def test_tp2_and_pp2_match_single_with_fim(prepared_data, reference, tmp_path) -> None:
    sample = (reference.run_dir / "sample.txt").read_text(encoding="utf-8")
    for name, layout in (("TP=2", "parallel=tp2"), ("PP=2", "parallel=pp2")):
        run = run_pretrain(2, _overrides(prepared_data, *INFILL, layout), tmp_path / name)
        _assert_close(run, reference, f"{name} with data.fim.rate=0.5")
        assert (run.run_dir / "sample.txt").read_text(encoding="utf-8") == sample, name


def test_exact_resume_with_fim(prepared_data, reference, tmp_path) -> None:
    run_dir = tmp_path / "resumed"
    stop = ("train.stop_at_step=3", "checkpoint.save_at_end=true")
    run_pretrain(1, _overrides(prepared_data, *stop), run_dir)
    assert (run_dir / "iter_0000003").is_dir()
    resumed = run_pretrain(1, _overrides(prepared_data), run_dir)
    assert "iter_0000003" in resumed.output
    expected = {r["step"]: (r["loss"], r["grad_norm"]) for r in train_records(reference.run_dir)}
    got = {r["step"]: (r["loss"], r["grad_norm"]) for r in train_records(run_dir)}
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected, "stopped at 3 and resumed != uninterrupted (bitwise)"


def _generate(source: str, prefix_file: Path) -> subprocess.CompletedProcess:
    return _tool(
        "pretrain.generate",
        source,
        f"prompt_file={prefix_file}",
        f"suffix={SUFFIX}",
        "temperature=0",
        "max_new_tokens=4",
    )


def test_generate_infills_from_the_checkpoint_and_its_export(reference, tmp_path) -> None:
    sample = (reference.run_dir / "sample.txt").read_text(encoding="utf-8")
    prefix_file = tmp_path / "prefix.py"
    prefix_file.write_text(SampleConfig.prompt, encoding="utf-8")
    out = _generate(f"checkpoint={reference.run_dir}", prefix_file)
    assert out.stdout == sample, (out.stdout, sample)  # greedy: the end-of-run sample's infill
    assert "infill middle (" in out.stderr
    hf = tmp_path / "hf"
    exported = export_hf(reference.run_dir, hf)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert _generate(f"hf={hf}", prefix_file).stdout == sample
