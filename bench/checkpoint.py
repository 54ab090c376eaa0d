"""Checkpoint throughput: save/load GB/s of a ~100M-parameter GPT vs a raw write of the same bytes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/checkpoint.py [--layers 12 --hidden 768 --dir DIR]

One process (gloo, CPU or GPU). Builds the model and a megatron optimizer with Adam state,
then times `pretrain.checkpoint.save_checkpoint` (sync), the same save with
`checkpoint.async_save=true` (blocking time = how long training stops), `load_checkpoint`, and
a plain `write + fsync` / `read` of the same number of bytes in the same directory, each
`--repeat` times (median). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pretrain.context import TrainContext

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def raw_write_read(path: Path, num_bytes: int, chunk: int = 64 << 20) -> tuple[float, float]:
    """Seconds to write (and fsync) then read `num_bytes` in `chunk`-sized blocks."""
    block = os.urandom(min(chunk, num_bytes))
    start = time.perf_counter()
    with open(path, "wb") as handle:
        left = num_bytes
        while left > 0:
            handle.write(block[: min(left, len(block))])
            left -= len(block)
        handle.flush()
        os.fsync(handle.fileno())
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(chunk):
            pass
    read_s = time.perf_counter() - start
    path.unlink()
    return write_s, read_s


def build_context(args: argparse.Namespace, run_dir: Path) -> TrainContext:
    """Model + optimizer (with Adam state after one step) + scheduler in a training context."""
    from pretrain import parallel
    from pretrain.config import PretrainConfig
    from pretrain.context import TrainContext
    from pretrain.model import build_model, wrap_model
    from pretrain.optim import build_optimizer, build_scheduler
    from pretrain.state import TrainState

    cfg = PretrainConfig()
    cfg.model.num_layers, cfg.model.hidden_size = args.layers, args.hidden
    cfg.model.num_attention_heads = args.hidden // 64
    cfg.model.max_position_embeddings = 1024
    cfg.data.paths = []
    cfg.run.dir = str(run_dir)
    dist = parallel.init_distributed(cfg.parallel, seed=cfg.seed)
    chunks = build_model(cfg.model, cfg.parallel, args.vocab, 128)
    model = wrap_model(chunks, cfg.parallel, "fp32")
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, "fp32")
    for param in model[0].parameters():  # one step so that Adam's moments exist
        param.main_grad.normal_(0, 1e-3)
    optimizer.step()
    scheduler = build_scheduler(optimizer, cfg.optim, 100)
    return TrainContext(
        cfg=cfg,
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=SimpleNamespace(path=""),  # no data: nothing to copy into the checkpoint
        data_manifests=[],
        max_steps=100,
        num_microbatches=1,
        padded_vocab_size=cfg.model.padded_vocab_size(args.vocab, 1),
        flops_per_token=0.0,
        state=TrainState(step=1),
    )


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def measure(args: argparse.Namespace) -> dict:
    """Run every timing `args.repeat` times (median); returns the result record."""
    from pretrain import checkpoint

    run_dir = Path(args.dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    ctx = build_context(args, run_dir)
    ctx.cfg.checkpoint.keep_last = 1
    checkpoint.save_checkpoint(ctx)  # warm-up (imports, strategy caches)
    saves, loads, blocks, totals, writes, reads = [], [], [], [], [], []
    for _ in range(args.repeat):
        ctx.state.step += 1
        start = time.perf_counter()
        path = checkpoint.save_checkpoint(ctx)
        saves.append(time.perf_counter() - start)
        num_bytes = _dir_bytes(path)
        start = time.perf_counter()
        checkpoint.load_checkpoint(ctx, path)
        loads.append(time.perf_counter() - start)
        ctx.cfg.checkpoint.async_save = True
        ctx.state.step += 1
        start = time.perf_counter()
        checkpoint.save_checkpoint(ctx)
        blocks.append(time.perf_counter() - start)
        checkpoint.finalize(ctx)
        totals.append(time.perf_counter() - start)
        ctx.cfg.checkpoint.async_save = False
        write_s, read_s = raw_write_read(run_dir / "raw.bin", num_bytes)
        writes.append(write_s)
        reads.append(read_s)
    shutil.rmtree(run_dir, ignore_errors=True)
    gb = num_bytes / 1e9
    save_s, load_s, write_s, read_s = map(_median, (saves, loads, writes, reads))
    return {
        "bench": "checkpoint",
        "params": sum(p.numel() for p in ctx.model[0].parameters()),
        "bytes": num_bytes,
        "repeat": args.repeat,
        "save_s": round(save_s, 3),
        "save_gbps": round(gb / save_s, 3),
        "load_s": round(load_s, 3),
        "load_gbps": round(gb / load_s, 3),
        "raw_write_gbps": round(gb / write_s, 3),
        "raw_read_gbps": round(gb / read_s, 3),
        "save_vs_raw_write": round(write_s / save_s, 3),
        "async_blocking_s": round(_median(blocks), 3),
        "async_total_s": round(_median(totals), 3),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    """Parse arguments, run, print a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dir", default="checkpoints/bench_checkpoint")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (median)")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pretrain import parallel

    try:
        rec = measure(args)
    finally:
        parallel.teardown()
    print(f"model: {rec['params'] / 1e6:.1f}M parameters, checkpoint {rec['bytes'] / 1e9:.3f} GB")
    rows = [
        ("save (sync)", rec["save_s"], rec["save_gbps"]),
        ("load", rec["load_s"], rec["load_gbps"]),
        ("raw write+fsync", rec["bytes"] / 1e9 / rec["raw_write_gbps"], rec["raw_write_gbps"]),
        ("raw read", rec["bytes"] / 1e9 / rec["raw_read_gbps"], rec["raw_read_gbps"]),
        ("async save: blocking", rec["async_blocking_s"], float("nan")),
        ("async save: total", rec["async_total_s"], float("nan")),
    ]
    print(f"{'operation':<24}{'seconds':>10}{'GB/s':>10}")
    for name, secs, gbps in rows:
        print(f"{name:<24}{secs:>10.3f}{gbps:>10.3f}")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
