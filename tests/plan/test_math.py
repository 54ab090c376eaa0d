"""Unit tests of the planner's formulas: GPU table, layout, activations, timing, search.

Hand-computed numbers throughout; no process group, no model is built (milliseconds each).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pretrain.config import (
    ClusterConfig,
    ConfigError,
    ModelConfig,
    ParallelConfig,
    PretrainConfig,
    TrainConfig,
)
from pretrain.plan import hardware, memory, search, timing
from pretrain.plan.comm import estimate_comm
from pretrain.plan.layout import layout_of, num_microbatches, with_layout
from pretrain.plan.params import count_params
from pretrain.plan.state_memory import static_memory
from pretrain.plan.types import CommEstimate, GpuSpec, Layout

CONF = Path(__file__).resolve().parents[2] / "conf"
LLAMA_VOCAB = 128_256
GIB = 2**30


def _group(group: str, name: str, schema: type) -> object:
    node = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    node.pop("defaults", None)
    return schema(**node)


def preset(model: str, train: str = "llama", precision: str = "bf16", **parallel) -> PretrainConfig:
    """A config of a model preset (conf/model) and train preset, vocab = Llama 3's."""
    cfg = PretrainConfig(
        model=_group("model", model, ModelConfig),
        train=_group("train", train, TrainConfig),
        parallel=ParallelConfig(**parallel),
        precision=precision,
    )
    cfg.model.vocab_size = LLAMA_VOCAB
    return cfg


# --- GPU table -------------------------------------------------------------------------------


def test_gpu_lookup_is_case_insensitive_with_aliases():
    h100 = hardware.gpu_spec("h100")
    assert h100.memory_bytes == 81_559 * 2**20
    assert (h100.peak_tflops_bf16, h100.peak_tflops_fp32) == (989.0, 67.0)
    for alias in ("H100", "h100-sxm", "H100_80GB", "nvidia h100"):
        assert hardware.gpu_spec(alias) == h100
    assert hardware.gpu_spec("A100-80GB").name == "a100"
    assert hardware.gpu_spec("a100_40gb").memory_bytes == 40 * GIB
    assert hardware.gpu_spec("H200").memory_bytes > 140 * GIB
    assert {"h100", "h200", "a100", "a100-40gb", "b200", "l40s"} <= set(hardware.gpu_names())


def test_unknown_gpu_names_the_known_ones():
    with pytest.raises(ConfigError, match="cluster.gpu='tpu-v5'.*h100, h200"):
        hardware.gpu_spec("tpu-v5")


def test_bf16_peaks_agree_with_the_training_logs_mfu_table():
    from pretrain.metrics import PEAK_TFLOPS

    checked = 0
    for name in hardware.gpu_names():
        if name.upper() in PEAK_TFLOPS:
            assert hardware.gpu_spec(name).peak_tflops_bf16 == PEAK_TFLOPS[name.upper()], name
            checked += 1
    assert checked >= 7


def test_device_names_map_to_table_entries():
    match = hardware.match_device_name
    assert match("NVIDIA H100 80GB HBM3") == "h100"
    assert match("NVIDIA A100-SXM4-80GB") == "a100"
    assert match("NVIDIA A100-PCIE-40GB") == "a100-40gb"
    assert match("NVIDIA A10G") == "a10"
    assert match("Tesla V100-SXM2-32GB") == "v100"
    assert match("Some Accelerator") is None


def test_detect_gpu_without_cuda_is_none():
    import torch

    if torch.cuda.is_available():
        spec = hardware.detect_gpu()
        assert spec.memory_bytes == torch.cuda.get_device_properties(0).total_memory
    else:
        assert hardware.detect_gpu() is None


# --- layout ----------------------------------------------------------------------------------


def test_layout_of_and_with_layout_round_trip():
    cfg = preset("llama-8b", tensor_model_parallel_size=2, pipeline_model_parallel_size=4)
    lay = layout_of(cfg, 64)
    assert (lay.tp, lay.pp, lay.dp, lay.micro_batch, lay.recompute) == (2, 4, 8, 1, "selective")
    other = Layout(tp=8, pp=2, dp=4, vpp=2, sp=True, dist_opt=True, micro_batch=2, recompute="full")
    copied = with_layout(cfg, other)
    assert layout_of(copied, 64) == other
    assert layout_of(cfg, 64) == lay  # the original is untouched
    with pytest.raises(ConfigError, match="not divisible by"):
        layout_of(cfg, 12)


# --- activations -----------------------------------------------------------------------------

# GPT-3 175B (Korthikanti et al. 2022, Table 3): s = 2048, h = 12288, a = 96, t = 8, b = 1.
S, H, A, T = 2048, 12288, 96, 8
SBH = S * H


@pytest.mark.parametrize(
    ("t", "sp", "recompute", "expected"),
    [
        (1, False, "none", SBH * 114),  # s b h (34 + 5 a s / h), 5 a s / h = 80
        (T, False, "none", SBH * 23),  # s b h (10 + 24/8 + 80/8)
        (T, True, "none", SBH // 8 * 114),  # s b h / t (34 + 80)
        (T, True, "selective", SBH // 8 * 34),
        (T, False, "full", 2 * SBH),
        (T, True, "full", 2 * SBH // 8),
    ],
)
def test_korthikanti_table2_for_gpt3_175b(t, sp, recompute, expected):
    assert memory.korthikanti_layer_bytes(S, 1, H, A, t, sp, recompute) == expected
    shape = memory.paper_shape(S, 1, H, A)
    assert memory.layer_bytes(shape, t, sp, recompute) == expected


SMALL = memory.LayerShape(
    seq=8, micro_batch=1, hidden=16, heads=2, kv_hidden=8, ffn=32, swiglu=True,
    value_bytes=2, hidden_dropout=False, attention_dropout=False,
)  # fmt: skip


def test_itemised_count_for_a_gqa_swiglu_layer_by_hand():
    # replicated: 4 inputs x 2 bytes x s b h (128) = 1024
    # Q + out-proj input 2 x 2 x 128, expanded K + V 2 x 2 x 128 = 1024
    # SwiGLU: 2 bytes x s b f (256) x 4 = 2048; scores: (4 fp32 + 2 cast) x a s^2 b (128) = 768
    assert memory.layer_bytes(SMALL, 1, False, "none") == 4864
    # selective: no scores, K and V at kv width: 1024 + (512 + 256) + 2048
    assert memory.layer_bytes(SMALL, 1, False, "selective") == 3840
    fused = dataclasses.replace(SMALL, fused_attention=True)
    assert memory.layer_bytes(fused, 1, False, "none") == 3840 + 4 * 2 * 8  # + fp32 lse
    assert memory.layer_bytes(SMALL, 1, False, "full") == 256
    fp32 = dataclasses.replace(SMALL, value_bytes=4)
    assert memory.layer_bytes(fp32, 1, False, "none") == 2048 + 2048 + 4096 + 512
    gelu = dataclasses.replace(SMALL, swiglu=False)
    assert memory.layer_bytes(gelu, 1, False, "none") == 4864 - 1024
    dropout = dataclasses.replace(SMALL, hidden_dropout=True, attention_dropout=True)
    assert memory.layer_bytes(dropout, 1, False, "none") == 4864 + 2 * 128 + 3 * 128
    # TP 2: replicated kept whole, the rest halved; SP halves all
    assert memory.layer_bytes(SMALL, 2, False, "none") == 1024 + (4864 - 1024) / 2
    assert memory.layer_bytes(SMALL, 2, True, "none") == 4864 / 2


def test_in_flight_micro_batches_of_1f1b_and_interleaved():
    assert memory.in_flight(0, 1, None, 64) == 1
    assert [memory.in_flight(r, 4, None, 8) for r in range(4)] == [4, 3, 2, 1]
    assert memory.in_flight(0, 4, None, 2) == 2
    assert memory.in_flight(0, 4, 2, 8) == 2 * 3 + 4 + 1
    assert memory.in_flight(3, 4, 2, 8) == 4 + 1
    assert memory.in_flight(0, 4, 2, 2) == 4  # all warm-up: m v chunks


def _stages(cfg: PretrainConfig, **layout) -> list[int]:
    base = dict(tp=1, pp=1, dp=1, micro_batch=1, recompute="none")
    return memory.stage_activation_bytes(cfg, Layout(**{**base, **layout}))


def test_first_stage_holds_all_layers_and_vpp_adds_its_factor():
    cfg = preset("llama-8b")
    layers = cfg.model.num_layers
    per_layer = memory.layer_bytes(memory.layer_shape(cfg, Layout(1, 4, 1)), 1, False, "none")
    one_f_one_b = _stages(cfg, pp=4)
    assert one_f_one_b[0] == int(layers * per_layer)  # 8 layers x 4 micro-batches in flight
    assert one_f_one_b[1] == int(3 * 8 * per_layer)
    interleaved = _stages(cfg, pp=4, vpp=2)
    assert interleaved[0] / one_f_one_b[0] == pytest.approx(1 + 3 / (4 * 2))
    assert _stages(cfg, pp=4, vpp=4)[0] / one_f_one_b[0] == pytest.approx(1 + 3 / 16)


def test_full_recompute_keeps_layer_inputs_plus_the_layer_being_recomputed():
    cfg = preset("llama-8b")
    sh = memory.layer_shape(cfg, Layout(1, 4, 1))
    inputs = 2 * 4096 * 4096  # one bf16 [s, b, h] input per layer
    assert memory.layer_bytes(sh, 1, False, "full") == inputs
    stage0 = _stages(cfg, pp=4, recompute="full")[0]
    assert stage0 == int(32 * inputs + memory.layer_bytes(sh, 1, False, "none"))


def test_last_stage_adds_the_logits():
    cfg = preset("llama-8b")
    lay = Layout(tp=2, pp=1, dp=1, micro_batch=1)
    sh = memory.layer_shape(cfg, lay)
    layers = cfg.model.num_layers * memory.layer_bytes(sh, 2, False, "none")
    s, h, vocab = 4096, 4096, 128_256  # 128256 = 501 x 256: no padding at TP 2
    head = (4 + 2) * s * vocab / 2 + 2 * 2 * s * h
    assert memory.activation_bytes(cfg, lay) == int(layers + head)
    stages = _stages(cfg, pp=4, tp=2)  # the last stage: 8 layers x 1 micro-batch + the head
    assert stages[3] == int(layers / 4 + head)
    assert memory.activation_bytes(cfg, Layout(2, 4, 1)) == max(stages) == stages[0]
    full = _stages(cfg, pp=4, tp=2, recompute="full")  # now the logits dominate
    assert memory.activation_bytes(cfg, Layout(2, 4, 1, recompute="full")) == full[3] > full[0]


def test_sp_recompute_and_micro_batch_move_activations_the_right_way():
    cfg = preset("llama-70b")

    def act(**kw):
        base = dict(tp=8, pp=4, dp=1, micro_batch=1, recompute="none")
        return memory.activation_bytes(cfg, Layout(**{**base, **kw}))

    assert act(sp=True) < act()
    assert act(recompute="full") < act(recompute="selective") < act()
    assert act(micro_batch=2) > act()
    assert act(sp=True, recompute="selective") < act(recompute="selective")


def test_estimate_memory_adds_static_activations_and_overhead():
    cfg = preset("llama-8b")
    lay = Layout(tp=4, pp=2, dp=8, sp=True, dist_opt=True, recompute="selective")
    counts = count_params(cfg.model, LLAMA_VOCAB, lay)
    cluster = ClusterConfig(overhead_gib=2.5)
    est = memory.estimate_memory(cfg, counts, lay, cluster)
    assert (est.weights, est.gradients, est.optimizer) == static_memory(
        counts, lay, "bf16", cfg.optim
    )
    assert est.activations == memory.activation_bytes(cfg, lay)
    assert est.overhead == int(2.5 * GIB)


def test_missing_vocabulary_is_a_config_error():
    cfg = PretrainConfig()
    with pytest.raises(ConfigError, match="model.vocab_size"):
        memory.activation_bytes(cfg, Layout(1, 1, 1))


# --- timing ----------------------------------------------------------------------------------

TINY_FLOPS_PER_TOKEN = 846_336
"""tiny (L 2, h 64, GeLU, biases, LayerNorm, tied), vocab 512, seq 64: 6 x (2 x 49,984 layer
params + 128 final norm + 32,768 output) + 6 x 2 x 64 x 64 attention."""


def _tiny(**train) -> PretrainConfig:
    """The schema's default model (L 2, h 64) and train (global batch 8, seq 64, 20 steps)."""
    return PretrainConfig(model=ModelConfig(vocab_size=512), train=TrainConfig(**train))


def test_model_and_hardware_flops_by_hand():
    from pretrain.model import flops_per_token

    cfg = _tiny()  # global batch 8 x seq 64 = 512 tokens per step
    assert flops_per_token(cfg.model, 512, 64) == TINY_FLOPS_PER_TOKEN
    none = timing.step_flops(cfg, Layout(1, 1, 1), 512)
    assert none.model == none.hardware == TINY_FLOPS_PER_TOKEN * 512
    full = timing.step_flops(cfg, Layout(1, 1, 1, recompute="full"), 512)
    layers_part = TINY_FLOPS_PER_TOKEN - 6 * 512 * 64  # 649,728: without the output layer
    assert full.hardware == (TINY_FLOPS_PER_TOKEN + layers_part / 3) * 512
    selective = timing.step_flops(cfg, Layout(1, 1, 1, recompute="selective"), 512)
    assert selective.hardware == (TINY_FLOPS_PER_TOKEN + 2 * 2 * 64 * 64) * 512
    assert full.model == selective.model == none.model


def test_step_time_is_compute_plus_bubble_plus_exposed_comm():
    cfg = _tiny(max_tokens=10_000)  # ceil(10000 / 512) = 20 steps
    gpu = GpuSpec("x", 80 * GIB, peak_tflops_bf16=200.0, peak_tflops_fp32=10.0)
    lay = Layout(tp=1, pp=2, dp=4, recompute="full")  # m = 8 / (1 x 4) = 2 micro-batches
    comm = CommEstimate(exposed_s=0.25)
    est = timing.estimate_time(cfg, lay, ClusterConfig(mfu=0.5), gpu, comm)
    hardware = (TINY_FLOPS_PER_TOKEN + 649_728 / 3) * 512
    compute = hardware / (8 * 10e12 * 0.5)
    assert est.hardware_flops_per_step == hardware
    assert est.flops_per_step == TINY_FLOPS_PER_TOKEN * 512
    assert est.compute_s == pytest.approx(compute)
    assert est.bubble_s == pytest.approx(compute * 1 / 2)
    assert est.step_time_s == pytest.approx(1.5 * compute + 0.25)
    assert est.tokens_per_s == pytest.approx(512 / est.step_time_s)
    assert est.steps == 20
    assert est.wall_clock_s == pytest.approx(20 * est.step_time_s)
    assert est.gpu_hours == pytest.approx(est.wall_clock_s * 8 / 3600)
    bf16 = timing.estimate_time(
        dataclasses.replace(cfg, precision="bf16"), lay, ClusterConfig(mfu=0.5), gpu, comm
    )
    assert bf16.compute_s == pytest.approx(compute / 20)  # 200 vs 10 TFLOP/s
    fp16 = timing.estimate_time(
        dataclasses.replace(cfg, precision="fp16"), lay, ClusterConfig(mfu=0.5), gpu, comm
    )
    assert fp16.compute_s == bf16.compute_s


def test_bubble_shrinks_with_micro_batches_and_interleaving():
    assert timing.bubble_fraction(1, None, 4) == 0
    assert timing.bubble_fraction(4, None, 8) == 3 / 8
    assert timing.bubble_fraction(4, 2, 8) == 3 / 16
    cfg = _tiny()
    gpu, cluster = hardware.gpu_spec("h100"), ClusterConfig()

    def bubble(global_batch: int, vpp: int | None = None) -> float:
        c = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, global_batch_size=global_batch)
        )
        est = timing.estimate_time(c, Layout(1, 2, 1, vpp=vpp), cluster, gpu, CommEstimate())
        assert num_microbatches(c, Layout(1, 2, 1)) == global_batch
        return est.bubble_s / est.compute_s

    assert bubble(8) == pytest.approx(1 / 8)
    assert bubble(16) < bubble(8)
    assert bubble(8, vpp=2) == pytest.approx(1 / 16)


def test_mfu_outside_0_1_is_a_config_error():
    with pytest.raises(ConfigError, match="cluster.mfu"):
        timing.estimate_time(
            _tiny(), Layout(1, 1, 1), ClusterConfig(mfu=0), hardware.gpu_spec("h100"),
            CommEstimate(),
        )  # fmt: skip


# --- search ----------------------------------------------------------------------------------


def _fits(cfg: PretrainConfig, lay: Layout, gpu: GpuSpec) -> bool:
    counts = count_params(cfg.model, LLAMA_VOCAB, lay)
    return memory.estimate_memory(cfg, counts, lay, cfg.cluster).total <= gpu.memory_bytes


def _time(cfg: PretrainConfig, lay: Layout, gpu: GpuSpec) -> float:
    applied = with_layout(cfg, lay)
    comm = estimate_comm(applied, count_params(cfg.model, LLAMA_VOCAB, lay), lay, cfg.cluster)
    return timing.estimate_time(applied, lay, cfg.cluster, gpu, comm).step_time_s


@pytest.mark.parametrize(("model", "world"), [("llama-70b", 1024), ("llama-8b", 64)])
def test_search_finds_a_layout_that_fits_quickly(model, world):
    cfg, gpu = preset(model), hardware.gpu_spec("h100")
    search.suggest_layout(cfg, cfg.cluster, gpu, LLAMA_VOCAB, 8)  # warm the imports
    start = time.perf_counter()
    found = search.suggest_layout(cfg, cfg.cluster, gpu, LLAMA_VOCAB, world)
    assert time.perf_counter() - start < 1.0
    assert found is not None and found.world == world
    assert _fits(cfg, found, gpu)
    assert found.sp == (found.tp > 1) and found.dist_opt == (found.dp > 1)
    assert cfg.model.num_layers % (found.pp * (found.vpp or 1)) == 0
    assert cfg.train.global_batch_size % (found.micro_batch * found.dp) == 0


def test_search_returns_none_when_nothing_fits():
    cfg = preset("llama-70b")
    assert (
        search.suggest_layout(cfg, cfg.cluster, hardware.gpu_spec("h100"), LLAMA_VOCAB, 1) is None
    )


@pytest.mark.parametrize(
    ("model", "world", "parallel"),
    [
        ("llama-8b", 64, dict(tensor_model_parallel_size=8, sequence_parallel=True)),
        ("llama-70b", 1024, dict(tensor_model_parallel_size=8, pipeline_model_parallel_size=4)),
    ],
)
def test_search_is_never_slower_than_the_configured_layout(model, world, parallel):
    cfg, gpu = preset(model, **parallel), hardware.gpu_spec("h100")
    own = layout_of(cfg, world)
    assert _fits(cfg, own, gpu)
    found = search.suggest_layout(cfg, cfg.cluster, gpu, LLAMA_VOCAB, world)
    assert _time(cfg, found, gpu) <= _time(cfg, own, gpu)


def test_search_keeps_the_configured_layout_as_a_candidate(monkeypatch):
    cfg = preset("llama-8b", tensor_model_parallel_size=8, sequence_parallel=True)
    monkeypatch.setattr(search, "_skeletons", lambda *args: iter(()))
    found = search.suggest_layout(cfg, cfg.cluster, hardware.gpu_spec("h100"), LLAMA_VOCAB, 64)
    assert found == layout_of(cfg, 64)


def test_search_prefers_less_recompute_when_memory_allows():
    cfg = preset("llama-1b")
    big = GpuSpec("huge", 10**15, 989.0, 67.0)
    found = search.suggest_layout(cfg, cfg.cluster, big, LLAMA_VOCAB, 8)
    assert found.recompute == "none"
    assert _fits(cfg, found, big)
