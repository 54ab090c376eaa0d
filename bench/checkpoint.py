"""Checkpoint throughput: save/load GB/s of a ~100M-parameter GPT vs a raw write of the same bytes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/checkpoint.py [--layers 12 --hidden 768 --dir DIR]
    OMP_NUM_THREADS=1 .venv/bin/python bench/checkpoint.py --smoke   # 0.7M parameters, 1 repeat

One process (gloo, CPU or GPU). Builds the model and a megatron optimizer with Adam state,
then times `pretrain.checkpoint.save_checkpoint` (sync) with its checksums (sha256 of every
file, recorded in checksums.json) and without them, the same save with
`checkpoint.async_save=true` (blocking time = how long training stops), `load_checkpoint` with
and without `checkpoint.verify_checksums`, the sha256 of the checkpoint's files alone, and a
plain `write + fsync` / `read` of the same number of bytes in the same directory, each
`--repeat` times (median). Everything is written in a fresh temporary folder inside `--dir`
(default `checkpoints/bench_checkpoint` of this checkout), removed at the end. Needs no data.
Prints a table and one JSON line (prefix `BENCH_JSON `).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pretrain.context import TrainContext

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
warnings.filterwarnings("ignore")
SMOKE = {"layers": 2, "hidden": 128, "vocab": 1000, "repeat": 1}
"""--smoke: a 0.7M-parameter model saved and loaded once (seconds; the test suite runs it)."""


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
    """Run every timing `args.repeat` times (median) in a temporary folder inside `args.dir`."""
    parent = Path(args.dir)
    created = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=parent))  # never touches other files
    try:
        return _timed(args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # left alone if another run is using it
                parent.rmdir()


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _save(ctx: TrainContext, checksums: bool) -> tuple[float, Path]:
    """Seconds of one sync save of the next step (checksums recorded or skipped)."""
    from pretrain import checkpoint
    from pretrain.checkpoint import verify

    ctx.state.step += 1
    original = verify.record_checksums
    if not checksums:
        verify.record_checksums = lambda tmp: None  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        path = checkpoint.save_checkpoint(ctx)
        return time.perf_counter() - start, path
    finally:
        verify.record_checksums = original


def _load(ctx: TrainContext, path: Path, checksums: bool) -> float:
    from pretrain import checkpoint

    ctx.cfg.checkpoint.verify_checksums = checksums
    return _seconds(lambda: checkpoint.load_checkpoint(ctx, path))


def _async_save(ctx: TrainContext) -> tuple[float, float]:
    """(seconds training blocks, seconds until committed) of one async save."""
    from pretrain import checkpoint

    ctx.cfg.checkpoint.async_save = True
    ctx.state.step += 1
    start = time.perf_counter()
    checkpoint.save_checkpoint(ctx)
    blocking = time.perf_counter() - start
    checkpoint.finalize(ctx)
    ctx.cfg.checkpoint.async_save = False
    return blocking, time.perf_counter() - start


def _hash_files(path: Path) -> float:
    from pretrain.checkpoint import verify

    files = [p for p in path.iterdir() if p.is_file() and p.name not in verify.UNHASHED]
    return _seconds(lambda: [verify.file_digest(p) for p in files])


def _timed(args: argparse.Namespace, run_dir: Path) -> dict:
    """Build the context in `run_dir`, time saves, loads and raw I/O; the result record."""
    from pretrain import checkpoint

    ctx = build_context(args, run_dir)
    ctx.cfg.checkpoint.keep_last = 1
    checkpoint.save_checkpoint(ctx)  # warm-up (imports, strategy caches)
    times: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        plain_s, path = _save(ctx, checksums=False)
        save_s, path = _save(ctx, checksums=True)
        num_bytes = _dir_bytes(path)
        row = {
            "save": save_s,
            "save_plain": plain_s,
            "load": _load(ctx, path, checksums=True),
            "load_plain": _load(ctx, path, checksums=False),
            "hash": _hash_files(path),
        }
        row["async_blocking"], row["async_total"] = _async_save(ctx)
        row["write"], row["read"] = raw_write_read(run_dir / "raw.bin", num_bytes)
        for key, value in row.items():
            times.setdefault(key, []).append(value)
    return _record(ctx, args, num_bytes, {k: _median(v) for k, v in times.items()})


def _record(ctx: TrainContext, args: argparse.Namespace, num_bytes: int, t: dict) -> dict:
    gb = num_bytes / 1e9
    return {
        "bench": "checkpoint",
        "params": sum(p.numel() for p in ctx.model[0].parameters()),
        "bytes": num_bytes,
        "repeat": args.repeat,
        "save_s": round(t["save"], 3),
        "save_gbps": round(gb / t["save"], 3),
        "save_no_checksums_s": round(t["save_plain"], 3),
        "save_no_checksums_gbps": round(gb / t["save_plain"], 3),
        "load_s": round(t["load"], 3),
        "load_gbps": round(gb / t["load"], 3),
        "load_no_checksums_s": round(t["load_plain"], 3),
        "load_no_checksums_gbps": round(gb / t["load_plain"], 3),
        "sha256_gbps": round(gb / t["hash"], 3),
        "raw_write_gbps": round(gb / t["write"], 3),
        "raw_read_gbps": round(gb / t["read"], 3),
        "save_vs_raw_write": round(t["write"] / t["save"], 3),
        "async_blocking_s": round(t["async_blocking"], 3),
        "async_total_s": round(t["async_total"], 3),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --smoke fills in the sizes left unset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="transformer layers (12)")
    parser.add_argument("--hidden", type=int, default=None, help="a multiple of 64 (768)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary size (32000)")
    parser.add_argument(
        "--dir",
        default=str(REPO / "checkpoints" / "bench_checkpoint"),
        help="folder to write in (a temporary subfolder; default checkpoints/bench_checkpoint)",
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions, median (3)")
    parser.add_argument("--smoke", action="store_true", help=f"small sizes: {SMOKE}")
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else {"layers": 12, "hidden": 768, "vocab": 32000, "repeat": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.hidden < 64 or args.hidden % 64 or min(args.layers, args.vocab, args.repeat) < 1:
        parser.error("--hidden must be a multiple of 64; --layers, --vocab, --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print a table and one JSON line."""
    args = parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from pretrain import parallel

    try:
        rec = measure(args)
    finally:
        parallel.teardown()
    print(f"model: {rec['params'] / 1e6:.1f}M parameters, checkpoint {rec['bytes'] / 1e9:.3f} GB")
    gb = rec["bytes"] / 1e9
    rows = [
        ("save (sync)", rec["save_s"], rec["save_gbps"]),
        ("save, no checksums", rec["save_no_checksums_s"], rec["save_no_checksums_gbps"]),
        ("load", rec["load_s"], rec["load_gbps"]),
        ("load, no checksums", rec["load_no_checksums_s"], rec["load_no_checksums_gbps"]),
        ("sha256 of the files", gb / rec["sha256_gbps"], rec["sha256_gbps"]),
        ("raw write+fsync", gb / rec["raw_write_gbps"], rec["raw_write_gbps"]),
        ("raw read", gb / rec["raw_read_gbps"], rec["raw_read_gbps"]),
        ("async save: blocking", rec["async_blocking_s"], None),
        ("async save: total", rec["async_total_s"], None),
    ]
    print(f"{'operation':<24}{'seconds':>10}{'GB/s':>10}")
    for name, secs, gbps in rows:
        print(f"{name:<24}{secs:>10.3f}{'' if gbps is None else f'{gbps:.3f}':>10}")
    print("BENCH_JSON " + json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
