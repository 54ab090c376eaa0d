"""Step time, throughput and cost of a run: FLOPs at an assumed utilisation, bubble, exposed comm.

- Model FLOPs per step = `pretrain.model.flops_per_token` (6 N + 6 L h s per token, the
  Megatron-LM / PaLM estimate, recompute not counted) x tokens per step (global batch x seq).
  They are what MFU is measured against (`TimeEstimate.flops_per_step`).
- Hardware FLOPs add the recomputation (Korthikanti et al. 2022, section 5 and Table 4: full
  recompute repeats each layer's forward, a third of its forward + backward FLOPs, i.e. x 4/3 of
  the transformer layers' part; selective recompute repeats only the attention-score forward,
  2 L h s per token). The output layer and loss are never recomputed.
- compute_s = hardware FLOPs / (world x peak x cluster.mfu), peak = the GPU's dense bf16/fp16
  tensor-core peak for bf16/fp16, its fp32 peak for fp32; `cluster.mfu` is the fraction of peak
  the kernels reach.
- bubble_s = compute_s x (p - 1) / (m v): the pipeline bubble of 1F1B (v = 1) and of the
  interleaved schedule (Narayanan et al. 2021, arXiv:2104.04473, sections 2.2.1-2.2.2), with m
  micro-batches per step per data-parallel rank.
- exposed_comm_s = `CommEstimate.exposed_s` (pretrain.plan.comm: the communication not hidden
  behind compute).
- step_time_s = compute_s + bubble_s + exposed_comm_s; tokens/s = tokens per step / step time;
  steps = `train.steps_for(tokens per step)`; wall clock = steps x step time;
  GPU-hours = wall clock x world / 3600.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.config import ClusterConfig, ConfigError, PretrainConfig
from pretrain.plan.layout import num_microbatches, padded_vocab
from pretrain.plan.types import CommEstimate, GpuSpec, Layout, TimeEstimate


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step over the whole job."""

    model: float
    """Without recompute (what MFU counts)."""
    hardware: float
    """With the recompute's extra forward (what the GPUs execute)."""


def step_flops(cfg: PretrainConfig, layout: Layout, padded_vocab: int) -> StepFlops:
    """Model and hardware FLOPs per step (see the module docstring)."""
    from pretrain.model import flops_per_token

    m, seq = cfg.model, cfg.train.seq_length
    per_token = flops_per_token(m, padded_vocab, seq)
    layers_part = per_token - 6.0 * padded_vocab * m.hidden_size  # without the output layer
    extra = {
        "none": 0.0,
        "selective": 2.0 * m.num_layers * m.hidden_size * seq,
        "full": layers_part / 3.0,
    }[layout.recompute]
    tokens = cfg.train.global_batch_size * seq
    return StepFlops(model=per_token * tokens, hardware=(per_token + extra) * tokens)


def peak_flops(gpu: GpuSpec, precision: str) -> float:
    """Peak FLOP/s of one device in the training precision."""
    tflops = gpu.peak_tflops_bf16 if precision in ("bf16", "fp16") else gpu.peak_tflops_fp32
    return tflops * 1e12


def bubble_fraction(pp: int, vpp: int | None, microbatches: int) -> float:
    """(p - 1) / (m v): pipeline idle time relative to the compute (Narayanan et al. 2021)."""
    return (pp - 1) / (microbatches * (vpp or 1))


def estimate_time(
    cfg: PretrainConfig,
    layout: Layout,
    cluster: ClusterConfig,
    gpu: GpuSpec,
    comm: CommEstimate,
    *,
    vocab_size: int | None = None,
) -> TimeEstimate:
    """Step time, tokens/s, steps, wall clock and GPU-hours of `cfg` run with `layout`.

    Args:
        cfg: model, train (batch, seq, steps / token budget) and precision are read.
        layout: the parallel layout (its world size is the job's GPUs).
        cluster: `mfu` is the assumed fraction of peak.
        gpu: the accelerator's peaks.
        comm: the communication estimate (its `exposed_s` is added).
        vocab_size: the tokenizer's vocabulary (default model.vocab_size).
    """
    if not 0 < cluster.mfu <= 1:
        raise ConfigError(f"cluster.mfu={cluster.mfu} must be in (0, 1], e.g. cluster.mfu=0.4")
    flops = step_flops(cfg, layout, padded_vocab(cfg, layout, vocab_size))
    compute = flops.hardware / (layout.world * peak_flops(gpu, cfg.precision) * cluster.mfu)
    bubble = compute * bubble_fraction(layout.pp, layout.vpp, num_microbatches(cfg, layout))
    step = compute + bubble + comm.exposed_s
    tokens_per_step = cfg.train.global_batch_size * cfg.train.seq_length
    steps = cfg.train.steps_for(tokens_per_step)
    wall = steps * step
    return TimeEstimate(
        flops_per_step=flops.model,
        compute_s=compute,
        bubble_s=bubble,
        exposed_comm_s=comm.exposed_s,
        step_time_s=step,
        tokens_per_s=tokens_per_step / step,
        steps=steps,
        wall_clock_s=wall,
        gpu_hours=wall * layout.world / 3600.0,
        hardware_flops_per_step=flops.hardware,
    )
