"""Fine-tuning throughput and optimizer memory: SFT and LoRA against full-parameter training.

    .venv/bin/python bench/finetune.py               # CPU: tiny + ~100M model (a few minutes)
    .venv/bin/python bench/finetune.py --smoke       # tiny, a small corpus, 1 + 2 steps (the test)
    .venv/bin/python bench/finetune.py --gpu         # CUDA: ~1B Llama-style model in bf16

Three modes on the same model, batch and instruction data, in one process:

- `full`: `objective=lm`, every parameter trains (the pretraining loop on the same token shards),
- `sft`: `objective=sft`, every parameter (loss-masked, packed, block-diagonal attention),
- `sft_lora`: `objective=sft peft=lora` (rank 8 on linear_qkv/proj/fc1/fc2, base frozen).

Per mode: tokens/s (all tokens of the batch) and target tokens/s (the tokens the SFT loss
counts) from the median of the timed steps; trainable and total parameters; optimizer-state
memory (Adam moments, fp32 main copies: every tensor of the optimizer's state) and the gradient
buffers of megatron's DDP, both in MiB, measured after the warm-up steps. LoRA starts from a
base checkpoint that the benchmark writes first (one step of `full`).

Data: `--data DIR` (instruction data), else built once with the real data pipeline
(`input=stdlib_instruct input.subset=train`, its own BPE tokenizer) in `--build-dir` (default
`checkpoints/data/bench_instruct`; `--smoke` uses a few modules only). Prints a table and one
JSON line (prefix `BENCH_JSON `).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

from bench.train import (  # noqa: E402  (after sys.path)
    _compose,
    _config,
    add_model_args,
    finish_model_args,
    print_table,
    start,
)

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger("bench.finetune")

BUILD_DIR = REPO / "checkpoints" / "data" / "bench_instruct"
"""Where the benchmark builds (once) its instruction dataset by default (git-ignored)."""
SMOKE_INCLUDE = ["json/*.py", "textwrap.py", "string.py", "shlex.py"]
"""Modules of the --smoke corpus (a few hundred pairs: seconds to prepare)."""
MODES = {
    "full": ["objective=lm"],
    "sft": ["objective=sft"],
    "sft_lora": ["objective=sft", "peft=lora"],
}
CPU_MODELS = {
    "tiny": [
        "model=tiny",
        "train.micro_batch_size=8",
        "train.global_batch_size=16",
        "train.seq_length=256",
    ],
    "gpt2-125m-shape": [
        "model=gpt2-125m",
        "train.micro_batch_size=1",
        "train.global_batch_size=2",
        "train.seq_length=512",
    ],
}
GPU_MODELS = {
    "llama-1b": [
        "model=llama-1b",
        "precision=bf16",
        "train.micro_batch_size=4",
        "train.global_batch_size=32",
        "train.seq_length=2048",
    ],
}


def build_dataset(out: Path, smoke: bool) -> Path:
    """Prepare the stdlib code-instruction pairs into `out` (temp dir, then rename)."""
    from omegaconf import OmegaConf

    from data_pipeline.config import register_configs
    from data_pipeline.prepare import run_prepare

    register_configs()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    overrides = [
        "input=stdlib_instruct",
        "input.subset=train",
        f"output.dir={tmp}",
        "workers=1",
        "progress=false",
        f"tokenizer.vocab_size={2048 if smoke else 8192}",
    ]
    if smoke:
        overrides.append("input.include=[" + ",".join(SMOKE_INCLUDE) + "]")
    log.info("building the instruction dataset in %s (input=stdlib_instruct)", out)
    start = time.perf_counter()
    try:
        run_prepare(OmegaConf.to_object(_compose("prepare", overrides)))
        tmp.chmod(0o755)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s (reused on later runs)", out, time.perf_counter() - start)
    return out


def resolve_data(data: str | None, build_dir: str | None, smoke: bool) -> Path:
    """--data, else the built dataset (built on first use)."""
    if data:
        return Path(data)
    out = Path(build_dir) if build_dir else BUILD_DIR
    if (out / "manifest.json").is_file():
        log.info("data: reusing %s", out)
        return out
    return build_dataset(out, smoke)


def optimizer_state_bytes(ctx: TrainContext) -> int:
    """Bytes of every tensor in the optimizer's state (Adam moments, fp32 main params)."""
    import torch

    from pretrain.checkpoint.state import inner_optimizers

    seen: set[int] = set()
    total = 0

    def add(tensor: Any) -> None:
        nonlocal total
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()

    for opt in inner_optimizers(ctx.optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        for state in torch_opt.state.values():
            for value in state.values():
                add(value)
        if ctx.cfg.precision != "fp32":  # mixed precision: the fp32 main copies it steps
            for group in torch_opt.param_groups:
                for param in group["params"]:
                    add(param)
    return total


def grad_buffer_bytes(ctx: TrainContext) -> int:
    """Bytes of megatron DDP's gradient buffers (trainable parameters only)."""
    total = 0
    for chunk in ctx.model:
        for buffer in getattr(chunk, "buffers", []):
            total += buffer.grad_data.numel() * buffer.grad_data.element_size()
    return total


def _time(ctx: TrainContext, steps: int, warmup: int) -> tuple[list[float], list[int]]:
    """(step seconds, target tokens per step) of the timed steps, after `warmup` steps."""
    from pretrain.step import train_step

    for _ in range(warmup):
        train_step(ctx)
    seconds, targets = [], []
    for _ in range(steps):
        result = train_step(ctx)
        seconds.append(result.data_s + result.fwd_bwd_s + result.optim_s)
        targets.append(result.target_tokens or 0)
    return seconds, targets


def _row(model: str, mode: str, ctx: TrainContext, seconds: list[float], targets: list[int]):
    from pretrain.peft import parameter_split

    step_s = statistics.median(seconds)
    trainable, total = parameter_split(ctx.model)
    target = statistics.median(targets) if ctx.sft_attention is not None else None
    return {
        "model": model,
        "mode": mode,
        "precision": ctx.cfg.precision,
        "tokens_per_step": ctx.tokens_per_step,
        "tokens_per_s": round(ctx.tokens_per_step / step_s, 1),
        "target_tokens_per_s": None if target is None else round(target / step_s, 1),
        "packing_efficiency": None if target is None else round(target / ctx.tokens_per_step, 3),
        "step_ms": round(1000 * step_s, 1),
        "trainable_m": round(trainable / 1e6, 3),
        "params_m": round(total / 1e6, 2),
        "optim_state_mib": round(optimizer_state_bytes(ctx) / 2**20, 2),
        "grad_buffer_mib": round(grad_buffer_bytes(ctx) / 2**20, 2),
    }


def _run_mode(overrides: list[str], data: Path, run_dir: Path, steps: int, warmup: int, fn):
    """Set up one in-process run, call fn(ctx), tear down."""
    import torch

    from pretrain.parallel import teardown
    from pretrain.train import setup
    from pretrain.validate import validate

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cfg = _config(overrides, data, steps + warmup, run_dir)
    ctx = setup(cfg, validate(cfg, world_size=1))
    try:
        return fn(ctx)
    finally:
        ctx.logger.finish()
        teardown()


def _save_base(ctx: TrainContext) -> Path:
    """One full-parameter step, saved: the LoRA runs' base checkpoint."""
    from pretrain import checkpoint
    from pretrain.checkpoint import layout
    from pretrain.step import train_step

    train_step(ctx)
    ctx.state.step += 1
    checkpoint.maybe_save(ctx, force=True)
    checkpoint.finalize(ctx)
    found = layout.read_latest(ctx.run_dir)
    assert found is not None, "the base checkpoint was not written"
    return found


def bench_model(name: str, model: list[str], data: Path, steps: int, warmup: int) -> list[dict]:
    """The three modes on one model shape; LoRA starts from a base written first."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "base"
        base = _run_mode([*model, *MODES["full"]], data, base_dir, 1, 0, _save_base)
        for mode, extra in MODES.items():
            overrides = [*model, *extra]
            if mode == "sft_lora":
                overrides += [f"checkpoint.load={base}", "checkpoint.weights_only=true"]
            log.info("%s %s: %d warm-up + %d timed steps", name, mode, warmup, steps)

            def measure(ctx: TrainContext, mode: str = mode) -> dict:
                return _row(name, mode, ctx, *_time(ctx, steps, warmup))

            rows.append(_run_mode(overrides, data, Path(tmp) / mode, steps, warmup, measure))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (--smoke: tiny, a small corpus, 1 warm-up + 2 timed steps)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", default=None, help="instruction data directory")
    parser.add_argument(
        "--build-dir",
        default=None,
        help=f"without --data: build (once) and use the dataset here (default {BUILD_DIR})",
    )
    return finish_model_args(parser, parser.parse_args(argv), CPU_MODELS, GPU_MODELS)


def main(argv: list[str] | None = None) -> int:
    """Run every selected model in the three modes; print the table and the JSON line."""
    args = parse_args(argv)
    if not start(args):
        return 2
    import torch

    table = GPU_MODELS if args.gpu else CPU_MODELS
    data = resolve_data(args.data, args.build_dir, args.smoke)
    rows = []
    for name in args.names:
        steps = args.steps or (10 if name == "tiny" or args.gpu else 4)
        rows += bench_model(name, table[name], data, steps, args.warmup)
    print_table(rows)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record = {"bench": "finetune", "device": device, "data": str(data), "results": rows}
    print("BENCH_JSON " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
