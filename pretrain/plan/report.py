"""A plan for people (`format_plan`: a table) and for programs (`plan_json`: one JSON object)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pretrain.plan.plan import Plan, layout_overrides
from pretrain.plan.types import MemoryEstimate, TimeEstimate

GIB = 2**30
CITATIONS = (
    "Formulas: activations per Korthikanti et al. 2022 (Reducing Activation Recomputation in "
    "Large Transformer Models); pipeline bubble (p-1)/(v*m) per Narayanan et al. 2021 "
    "(Efficient Large-Scale Language Model Training on GPU Clusters); FLOPs 6N + attention "
    "(Kaplan et al. 2020). See docs/planner.md."
)


def _count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n:.0f} B"


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def _row(label: str, value: str) -> str:
    return f"  {label:<34} {value}"


def _params_section(plan: Plan) -> list[str]:
    p = plan.params
    per_rank = p.per_rank.values()
    return [
        "Parameters",
        _row("total", f"{p.total:,} ({_count(p.total)})"),
        _row("per rank (max / min)", f"{max(per_rank):,} / {min(per_rank):,}"),
        _row(
            "vocabulary (padded)", f"{plan.vocab_size:,} ({p.padded_vocab:,}), {plan.vocab_source}"
        ),
        _row("embedding / untied output layer", f"{p.embedding:,} / {p.output:,}"),
    ]


def _memory_rows(memory: MemoryEstimate, gpu_bytes: int) -> list[str]:
    rows = [_row(part, _bytes(value)) for part, value in memory.parts().items() if part != "total"]
    verdict = "FITS" if memory.total <= gpu_bytes else "DOES NOT FIT"
    return [*rows, _row("total", f"{_bytes(memory.total)} of {_bytes(gpu_bytes)}: {verdict}")]


def _comm_section(plan: Plan) -> list[str]:
    lines = ["Communication per step (busiest rank)"]
    for kind, value in plan.comm.bytes_per_step.items():
        if value:
            lines.append(
                _row(kind, f"{_bytes(value)}, {_duration(plan.comm.seconds.get(kind, 0.0))}")
            )
    if len(lines) == 1:
        lines.append(_row("(none)", "a single GPU communicates nothing"))
    lines.append(_row("exposed (not hidden by compute)", _duration(plan.comm.exposed_s)))
    return lines


def _time_rows(t: TimeEstimate, mfu: float, gpus: int) -> list[str]:
    return [
        _row("FLOPs per step", f"{t.flops_per_step:.3e}"),
        _row("compute", f"{_duration(t.compute_s)} (assumed MFU {mfu:.0%})"),
        _row("pipeline bubble", _duration(t.bubble_s)),
        _row("exposed communication", _duration(t.exposed_comm_s)),
        _row("step time", _duration(t.step_time_s)),
        _row("tokens/s", f"{t.tokens_per_s:,.0f}"),
        _row("steps", f"{t.steps:,}"),
        _row("wall clock", _duration(t.wall_clock_s)),
        _row("GPU-hours", f"{t.gpu_hours:,.{0 if t.gpu_hours >= 10 else 4}f} ({gpus} GPUs)"),
    ]


def _budget_section(plan: Plan) -> list[str]:
    lines = ["Token budget", _row("training tokens", f"{plan.tokens:,}")]
    if plan.budget is None:
        return [*lines, _row("epochs", "not checked: no data manifests")]
    for path, epochs in plan.budget.epochs.items():
        lines.append(_row("epochs", f"{epochs:.3f} over {path}"))
    return lines


def _suggestion_section(plan: Plan) -> list[str]:
    if plan.suggestion is None:
        if plan.fits:
            return []
        return [
            "No layout of this world size fits: more GPUs, a smaller model or shorter sequences."
        ]
    title = "Suggested layout" if not plan.fits else "A faster layout that fits"
    lines = [f"{title}: {plan.suggestion.describe()}"]
    lines.append("  " + " ".join(layout_overrides(plan.suggestion, plan.layout)))
    if plan.suggestion_memory is not None:
        lines += _memory_rows(plan.suggestion_memory, plan.gpu.memory_bytes)[-1:]
    if plan.suggestion_time is not None:
        lines.append(_row("step time", _duration(plan.suggestion_time.step_time_s)))
        lines.append(_row("tokens/s", f"{plan.suggestion_time.tokens_per_s:,.0f}"))
    return lines


def format_plan(plan: Plan) -> str:
    """The human-readable table (ends with the formulas' citations)."""
    gpus = plan.layout.world
    sections = [
        [f"Plan: {plan.layout.describe()} on {gpus} x {plan.gpu.name}"],
        _params_section(plan),
        [
            f"Memory per GPU (most loaded rank, {plan.gpu.name})",
            *_memory_rows(plan.memory, plan.gpu.memory_bytes),
        ],
        _comm_section(plan),
        ["Time", *_time_rows(plan.time, plan.mfu, gpus)],
        _budget_section(plan),
        _suggestion_section(plan),
        ["Warnings", *(f"  - {w}" for w in plan.warnings)] if plan.warnings else [],
        [CITATIONS],
    ]
    return "\n\n".join("\n".join(s) for s in sections if s)


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan for programs (the JSON line; keys in docs/planner.md)."""
    per_rank = {f"pp{pp}.tp{tp}": n for (pp, tp), n in sorted(plan.params.per_rank.items())}
    t = plan.time
    return {
        "fits": plan.fits,
        "total_params": plan.params.total,
        "params_per_rank": per_rank,
        "params_per_rank_max": max(per_rank.values()),
        "vocab_size": plan.vocab_size,
        "padded_vocab_size": plan.params.padded_vocab,
        "memory_per_gpu_bytes": plan.memory.parts(),
        "gpu_memory_bytes": plan.gpu.memory_bytes,
        "comm_bytes_per_step": dict(plan.comm.bytes_per_step),
        "comm_seconds_per_step": dict(plan.comm.seconds),
        "flops_per_step": t.flops_per_step,
        "compute_s": t.compute_s,
        "bubble_s": t.bubble_s,
        "exposed_comm_s": t.exposed_comm_s,
        "step_time_s": t.step_time_s,
        "tokens_per_s": t.tokens_per_s,
        "steps": t.steps,
        "wall_clock_s": t.wall_clock_s,
        "gpu_hours": t.gpu_hours,
        "tokens": plan.tokens,
        "mfu": plan.mfu,
        "epochs": dict(plan.budget.epochs) if plan.budget else None,
        "layout": {**dataclasses.asdict(plan.layout), "world": plan.layout.world},
        "gpu": dataclasses.asdict(plan.gpu),
        "suggestion": dataclasses.asdict(plan.suggestion) if plan.suggestion else None,
        "suggestion_overrides": (
            layout_overrides(plan.suggestion, plan.layout) if plan.suggestion else None
        ),
        "suggestion_memory_bytes": (
            plan.suggestion_memory.parts() if plan.suggestion_memory else None
        ),
        "suggestion_step_time_s": (
            plan.suggestion_time.step_time_s if plan.suggestion_time else None
        ),
        "warnings": list(plan.warnings),
    }
