"""Training throughput: our loop vs a bare megatron-core loop on the same model and batch.

    .venv/bin/python bench/train.py                 # CPU: tiny + ~100M model (a couple of minutes)
    .venv/bin/python bench/train.py --models tiny   # just the tiny model
    .venv/bin/python bench/train.py --gpu           # CUDA: ~1B Llama-style model in bf16, MFU

"Ours" is `pretrain.step.train_step` on a context built by `pretrain.train.setup` (real data
from GPTDataset, loss/grad-norm checks, skip logic, timing). "Bare" is the minimal
megatron-core loop (QuickStart style): a fixed in-memory batch, `get_forward_backward_func`,
`optimizer.step()`. Both use the same model shape, batch and precision in one process; steps
alternate between the two so machine noise hits both alike. Overhead target: <= 5%.
Prints a table and one JSON line (prefix `BENCH_JSON `).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

CPU_MODELS = {
    "tiny": [
        "model=tiny",
        "train.micro_batch_size=8",
        "train.global_batch_size=16",
        "train.seq_length=128",
    ],
    "gpt2-125m-shape": [
        "model=gpt2-125m",
        "train.micro_batch_size=1",
        "train.global_batch_size=2",
        "train.seq_length=256",
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


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    demo = REPO / "checkpoints" / "data" / "stdlib_code"
    if (demo / "manifest.json").is_file():
        return demo
    from tests._prepared import build_small_dataset

    out = Path(tempfile.gettempdir()) / "bench_train_data"
    if not (out / "manifest.json").is_file():
        build_small_dataset(out, vocab_size=512)
    return out


def _config(overrides: list[str], data: Path, steps: int, run_dir: Path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pretrain.config import register_configs

    register_configs()
    fixed = [
        f"data.paths=[{data}]",
        f"run.dir={run_dir}",
        "logging.wandb.mode=disabled",
        "checkpoint.resume=never",
        "checkpoint.save_at_end=false",
        "eval.interval=0",
        f"train.max_steps={steps + 10}",
        "optim.warmup_steps=1",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="pretrain", overrides=fixed + overrides))


def _bare_loop(ctx):
    """The same model/optimizer setup, driven by the minimal megatron-core loop."""
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from pretrain.model import build_model, wrap_model
    from pretrain.optim import build_optimizer, configure_model_hooks

    cfg = ctx.cfg
    chunks = build_model(
        cfg.model, cfg.parallel, ctx.tokenizer.vocab_size, cfg.train.seq_length, cfg.precision
    )
    model = wrap_model(chunks, cfg.parallel, cfg.precision)
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, cfg.precision)
    configure_model_hooks(model, optimizer, cfg.parallel)
    mbs, seq = cfg.train.micro_batch_size, cfg.train.seq_length
    tokens = torch.randint(0, ctx.tokenizer.vocab_size, (mbs, seq + 1), device=ctx.device)
    batch = (tokens[:, :-1], torch.arange(seq, device=ctx.device).expand(mbs, -1), tokens[:, 1:])

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach()}

    def forward_step(_iterator, chunk):
        return chunk(batch[0], batch[1], None, labels=batch[2]), loss_func

    def step() -> float:
        start = time.perf_counter()
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=[None] * len(model),
            model=model,
            num_microbatches=ctx.num_microbatches,
            seq_length=seq,
            micro_batch_size=mbs,
            forward_only=False,
        )
        optimizer.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def bench_model(name: str, overrides: list[str], data: Path, steps: int, warmup: int) -> dict:
    from pretrain.metrics import peak_tflops
    from pretrain.parallel import teardown
    from pretrain.step import train_step
    from pretrain.train import setup
    from pretrain.validate import validate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(overrides, data, steps + warmup, Path(tmp) / name)
        ctx = setup(cfg, validate(cfg, world_size=1))
        bare = _bare_loop(ctx)
        ours_t, bare_t, splits = [], [], []
        for i in range(warmup + steps):
            result = train_step(ctx)
            b = bare()
            if i >= warmup:
                ours_t.append(result.data_s + result.fwd_bwd_s + result.optim_s)
                bare_t.append(b)
                splits.append((result.data_s, result.fwd_bwd_s, result.optim_s))
        ctx.logger.finish()
        tokens = ctx.tokens_per_step
        params = sum(p.numel() for chunk in ctx.model for p in chunk.parameters())
        ours, base = statistics.median(ours_t), statistics.median(bare_t)
        peak = peak_tflops(cfg.logging)
        tflops = ctx.flops_per_token * tokens / ours / 1e12
        row = {
            "model": name,
            "params_m": round(params / 1e6, 1),
            "precision": cfg.precision,
            "tokens_per_step": tokens,
            "ours_tokens_per_s": round(tokens / ours, 1),
            "bare_tokens_per_s": round(tokens / base, 1),
            "overhead_pct": round(100 * (ours - base) / base, 2),
            "data_ms": round(1000 * statistics.median(s[0] for s in splits), 2),
            "fwd_bwd_ms": round(1000 * statistics.median(s[1] for s in splits), 1),
            "optim_ms": round(1000 * statistics.median(s[2] for s in splits), 1),
            "tflops_per_device": round(tflops, 3),
            "mfu": round(tflops / peak, 4) if peak else None,
        }
        teardown()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma list (default: all for device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=None, help="data directory (manifest.json)")
    parser.add_argument("--gpu", action="store_true", help="GPU models (needs CUDA)")
    args = parser.parse_args()
    import torch

    table = GPU_MODELS if args.gpu else CPU_MODELS
    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs CUDA", file=sys.stderr)
        return 2
    names = args.models.split(",") if args.models else list(table)
    data = _data_dir(args.data)
    rows = []
    for name in names:
        steps = args.steps or (10 if name == "tiny" or args.gpu else 4)
        rows.append(bench_model(name, table[name], data, steps, args.warmup))
    cols = [
        "model",
        "params_m",
        "precision",
        "tokens_per_step",
        "ours_tokens_per_s",
        "bare_tokens_per_s",
        "overhead_pct",
        "data_ms",
        "fwd_bwd_ms",
        "optim_ms",
        "tflops_per_device",
        "mfu",
    ]
    print(" | ".join(f"{c:>17}" for c in cols))
    for row in rows:
        print(" | ".join(f"{str(row[c]):>17}" for c in cols))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print("BENCH_JSON " + json.dumps({"bench": "train", "device": device, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
