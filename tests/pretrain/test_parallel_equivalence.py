"""Parallel layouts give the same numbers as one process (real torchrun + gloo on the CPU).

Same data, seed and global batch; 4 steps of a 2-layer (hidden 64) GPT. Initial weights are
identical for every layout (CPU initialisation, per-layer seeds), so differences come only from
the floating-point order of reductions.

Tolerances (stated once, used everywhere): per-step loss within 1e-5 absolute (measured:
bitwise equal for TP/SP/DP, ~5e-7 for virtual PP); grad norm within 1e-5 relative (measured
~1e-7). Both are far below the loss change between steps (~1e-2), so a wrong layout
(e.g. missed gradient reduction) fails.
"""

from __future__ import annotations

import pytest

from tests._dist import RunResult, run_pretrain

LOSS_ABS = 1e-5
GRAD_NORM_REL = 1e-5
STEPS = 4

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _base(data_dir) -> list[str]:
    return [
        f"data.paths=[{data_dir}]",
        f"train.max_steps={STEPS}",
        "train.micro_batch_size=2",
        "train.global_batch_size=8",
        "train.seq_length=64",
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        "model.num_attention_heads=4",
        "optim.warmup_steps=1",
    ]


def assert_same_run(run: RunResult, ref: RunResult, what: str) -> None:
    losses, ref_losses = run.losses(), ref.losses()
    assert len(losses) == len(ref_losses) == STEPS, what
    for step, (a, b) in enumerate(zip(losses, ref_losses, strict=True), start=1):
        assert abs(a - b) <= LOSS_ABS, f"{what}: step {step} loss {a!r} != {b!r}"
    norms, ref_norms = run.by_step("grad_norm"), ref.by_step("grad_norm")
    for step, ref_norm in ref_norms.items():
        if ref_norm is None:
            continue
        assert abs(norms[step] - ref_norm) <= GRAD_NORM_REL * ref_norm, (
            f"{what}: step {step} grad norm {norms[step]!r} != {ref_norm!r}"
        )
    # the runs must actually train: the loss moves by far more than the tolerance
    assert abs(ref_losses[-1] - ref_losses[0]) > 1000 * LOSS_ABS


@pytest.fixture(scope="module")
def reference(prepared_data, tmp_path_factory) -> RunResult:
    """One process, 4 micro-batches of 2 per step."""
    out = tmp_path_factory.mktemp("ref")
    return run_pretrain(1, _base(prepared_data), out / "run")


def test_tensor_sequence_and_data_parallel_match_single(prepared_data, reference, tmp_path):
    layouts = {
        "TP=2": ["parallel=tp2"],
        "TP=2 + sequence parallel": ["parallel=tp2_sp"],
        "DP=2": ["parallel=single"],
        "DP=2 + distributed optimizer": ["parallel=dp_zero1"],
    }
    for index, (name, overrides) in enumerate(layouts.items()):
        run = run_pretrain(2, _base(prepared_data) + overrides, tmp_path / f"run{index}")
        assert_same_run(run, reference, name)
        assert run.records[0]["consumed_samples"] == 8


LLAMA_STYLE = [
    "model.num_layers=4",
    "model.share_embeddings_and_output_weights=false",
    "model.normalization=RMSNorm",
    "model.activation=swiglu",
    "model.position_embedding_type=rope",
    "model.num_query_groups=2",
    "model.add_bias_linear=false",
]
"""A Llama-shaped tiny model: untied output layer, RMSNorm, SwiGLU, RoPE, GQA (4 heads, 2 kv)."""

GREEDY_SAMPLE = ["sample.enabled=true", "sample.max_new_tokens=3", "sample.temperature=0"]


def test_pipeline_and_virtual_pipeline_match_single(prepared_data, reference, tmp_path):
    run = run_pretrain(2, _base(prepared_data) + ["parallel=pp2"], tmp_path / "pp2")
    assert_same_run(run, reference, "PP=2 (1F1B)")
    # interleaved schedule: 4 layers in 2 stages x 2 virtual chunks, llama-style, untied
    four = _base(prepared_data) + LLAMA_STYLE + GREEDY_SAMPLE
    ref4 = run_pretrain(1, four, tmp_path / "ref4")
    vpp = run_pretrain(2, four + ["parallel=pp2_vpp2"], tmp_path / "vpp")
    assert_same_run(vpp, ref4, "PP=2 x VPP=2 (interleaved 1F1B), llama-style, untied")
    assert abs(ref4.losses()[0] - reference.losses()[0]) > 1e-4  # a different model indeed
    # the end-of-run sample also goes through the interleaved schedule (needs >= PP micro-batches)
    sample = (tmp_path / "vpp" / "sample.txt").read_text()
    assert sample == (tmp_path / "ref4" / "sample.txt").read_text() and sample.startswith("def ")
    # GQA (2 kv heads split over TP 2) with sequence parallel and the RMSNorm/SwiGLU/RoPE layers
    tp_sp = run_pretrain(2, four + ["parallel=tp2_sp"], tmp_path / "tp_sp")
    assert_same_run(tp_sp, ref4, "TP=2 + SP, llama-style (GQA 4/2, RMSNorm, SwiGLU, RoPE)")


def test_tp2_pp2_on_four_ranks_matches_single(prepared_data, reference, tmp_path):
    run = run_pretrain(4, _base(prepared_data) + ["parallel=tp2pp2"], tmp_path / "tp2pp2")
    assert_same_run(run, reference, "TP=2 x PP=2 on 4 ranks")
