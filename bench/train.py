"""Training throughput: our loop vs a bare megatron-core loop on the same model and batch.

    .venv/bin/python bench/train.py                 # CPU: tiny + ~100M model (a couple of minutes)
    .venv/bin/python bench/train.py --models tiny   # just the tiny model
    .venv/bin/python bench/train.py --smoke         # tiny, 1 warm-up + 2 timed steps (the test)
    .venv/bin/python bench/train.py --gpu           # CUDA: ~1B Llama-style model in bf16, MFU

"Ours" is `pretrain.step.train_step` on a context built by `pretrain.train.setup` (real data
from GPTDataset, loss/grad-norm checks, skip logic, timing). "Bare" is the minimal
megatron-core loop (QuickStart style): a fixed in-memory batch, `get_forward_backward_func`,
`optimizer.step()`. Both use the same model shape, batch and precision in one process. Our
loop's warm-up steps run first, alone (so that `peak_mem_gib`, `torch.cuda.max_memory_allocated`
on GPU, is our loop's own peak); then the bare loop is built and the timed steps alternate
between the two so that machine noise hits both alike. Overhead target: <= 5%.

Data: `--data DIR`, else the demo dataset `checkpoints/data/stdlib_code` if it exists, else a
dataset built once with the real data pipeline (`run_prepare`, ~3 MB of the running Python's
stdlib, 8k BPE) in `--build-dir` (default `checkpoints/data/bench_stdlib`), reused later.
Prints a table and one JSON line (prefix `BENCH_JSON `).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger("bench.train")

DEMO_DATA = REPO / "checkpoints" / "data" / "stdlib_code"
"""The demo's dataset (`launch/demo.sh`), used when present and no --data/--build-dir is given."""
BUILD_DIR = REPO / "checkpoints" / "data" / "bench_stdlib"
"""Where the benchmark builds (once) its own dataset by default (checkpoints/ is git-ignored)."""
BUILD_MAX_BYTES = 3_000_000
"""Standard-library bytes in the built dataset (~0.8M tokens at 8k vocab; ~5 s on 2 cores)."""
BUILD_VOCAB_SIZE = 8192
"""The built dataset's BPE vocabulary: the demo's (bpe_8k), so both datasets' figures compare."""

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


def stdlib_sample(max_bytes: int = BUILD_MAX_BYTES) -> list[str]:
    """The first non-empty top-level standard-library modules (sorted by name) up to `max_bytes`."""
    files, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        size = path.stat().st_size
        if size == 0:
            continue
        files.append(str(path))
        total += size
        if total >= max_bytes:
            break
    return files


def build_dataset(out: Path) -> Path:
    """Prepare the stdlib sample into `out` with `run_prepare`, atomically (temp dir + rename).

    Concurrent builds are safe (the first rename wins); a non-empty `out` is never overwritten.
    """
    from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare

    files = stdlib_sample()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    log.info(
        "building the benchmark dataset in %s: data_pipeline run_prepare on %d stdlib files "
        "(%.1f MB, BPE vocab %d)",
        out,
        len(files),
        sum(Path(f).stat().st_size for f in files) / 1e6,
        BUILD_VOCAB_SIZE,
    )
    start = time.perf_counter()
    cfg = PrepareConfig(
        input=InputConfig(name="bench_stdlib", paths=files, format="text"),
        tokenizer=TokenizerConfig(vocab_size=BUILD_VOCAB_SIZE),
        output=OutputConfig(dir=str(tmp), num_shards=1),
        workers=1,
        progress=False,
    )
    try:
        run_prepare(cfg)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s (reused on later runs)", out, time.perf_counter() - start)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished build `tmp` to `out`, unless another process got there first."""
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the dataset from the checkout's other users
    try:
        tmp.rename(out)  # fails if `out` is a non-empty directory
    except OSError as e:
        if not (out / "manifest.json").is_file():
            raise RuntimeError(f"cannot create the dataset {out} ({e}): remove {out}") from e
        log.info("another process built %s first; using it", out)


def resolve_data(data: str | None, build_dir: str | None) -> Path:
    """--data; else the demo dataset (unless --build-dir is given); else the built dataset."""
    if data:
        return Path(data)
    if build_dir is None and (DEMO_DATA / "manifest.json").is_file():
        log.info("data: the demo dataset %s", DEMO_DATA)
        return DEMO_DATA
    out = Path(build_dir) if build_dir else BUILD_DIR
    if (out / "manifest.json").is_file():
        log.info("data: reusing the benchmark dataset %s", out)
        return out
    return build_dataset(out)


def _uses_installed_configs() -> bool:
    """Whether the installed `pretrain_pipeline_conf` is this checkout's conf/ (or there is none).

    `pretrain` is imported from this checkout; a config package from another tree (another
    clone's editable install, a wheel) may hold keys this code does not know.
    """
    spec = importlib.util.find_spec("pretrain_pipeline_conf")
    if spec is None:
        return False
    local = REPO / "conf"
    places = [Path(p).resolve() for p in spec.submodule_search_locations or []]
    return local.resolve() in places or not (local / "pretrain.yaml").is_file()


def _compose(config_name: str, overrides: list[str]) -> Any:
    """Compose a shipped config: the package `pretrain_pipeline_conf` (or this checkout's conf/)."""
    from hydra import compose, initialize_config_dir, initialize_config_module

    if _uses_installed_configs():
        init = initialize_config_module("pretrain_pipeline_conf", version_base="1.3")
    else:
        log.info("configs: %s (pretrain_pipeline_conf is installed from elsewhere)", REPO / "conf")
        init = initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3")
    with init:
        return compose(config_name=config_name, overrides=overrides)


def _config(overrides: list[str], data: Path, steps: int, run_dir: Path) -> Any:
    """The pretrain config of one benchmark model: no eval, saves, W&B or resume."""
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
    return OmegaConf.to_object(_compose("pretrain", fixed + overrides))


def _bare_loop(ctx: TrainContext) -> Callable[[], float]:
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


def _peak_memory_gib(ctx: TrainContext) -> float | None:
    """`torch.cuda.max_memory_allocated` in GiB on GPU; None on CPU."""
    import torch

    if ctx.device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)


def _time_steps(ctx: TrainContext, steps: int, warmup: int) -> dict[str, Any]:
    """Warm up our loop alone (peak memory), then alternate timed steps of ours and bare."""
    from pretrain.step import train_step

    for _ in range(warmup):
        train_step(ctx)
    peak = _peak_memory_gib(ctx)
    bare = _bare_loop(ctx)
    for _ in range(warmup):
        bare()
    ours, base, splits = [], [], []
    for _ in range(steps):
        result = train_step(ctx)
        base.append(bare())
        ours.append(result.data_s + result.fwd_bwd_s + result.optim_s)
        splits.append((result.data_s, result.fwd_bwd_s, result.optim_s))
    return {"ours": ours, "bare": base, "splits": splits, "peak_mem_gib": peak}


def _row(name: str, ctx: TrainContext, timings: dict[str, Any]) -> dict[str, Any]:
    """One result record from the medians of the timed steps."""
    from pretrain.metrics import peak_tflops

    tokens = ctx.tokens_per_step
    params = sum(p.numel() for chunk in ctx.model for p in chunk.parameters())
    ours, base = statistics.median(timings["ours"]), statistics.median(timings["bare"])
    splits = timings["splits"]
    peak = peak_tflops(ctx.cfg.logging)
    tflops = ctx.flops_per_token * tokens / ours / 1e12
    return {
        "model": name,
        "params_m": round(params / 1e6, 1),
        "precision": ctx.cfg.precision,
        "tokens_per_step": tokens,
        "ours_tokens_per_s": round(tokens / ours, 1),
        "bare_tokens_per_s": round(tokens / base, 1),
        "overhead_pct": round(100 * (ours - base) / base, 2),
        "data_ms": round(1000 * statistics.median(s[0] for s in splits), 2),
        "fwd_bwd_ms": round(1000 * statistics.median(s[1] for s in splits), 1),
        "optim_ms": round(1000 * statistics.median(s[2] for s in splits), 1),
        "tflops_per_device": round(tflops, 3),
        "mfu": round(tflops / peak, 4) if peak else None,
        "peak_mem_gib": timings["peak_mem_gib"],
    }


def bench_model(name: str, overrides: list[str], data: Path, steps: int, warmup: int) -> dict:
    """Set up our loop on `data` for one model shape, time it against the bare loop."""
    import torch

    from pretrain.parallel import teardown
    from pretrain.train import setup
    from pretrain.validate import validate

    gc.collect()  # the previous model's tensors, before the peak-memory counter restarts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    log.info("%s: %d warm-up + %d timed steps", name, warmup, steps)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(overrides, data, steps + warmup, Path(tmp) / name)
        ctx = setup(cfg, validate(cfg, world_size=1))
        try:
            row = _row(name, ctx, _time_steps(ctx, steps, warmup))
        finally:
            ctx.logger.finish()
            teardown()
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per row (the records' keys as columns, each as wide as its widest value)."""
    cols = list(rows[0])
    cells = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    print(" | ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for line in cells:
        print(" | ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)))


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The options every training benchmark shares (bench/train.py, bench/finetune.py)."""
    parser.add_argument("--models", default=None, help="comma list (default: all for device)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2)")
    parser.add_argument("--gpu", action="store_true", help="GPU models (needs CUDA)")
    parser.add_argument("--smoke", action="store_true", help="--models tiny --steps 2 --warmup 1")


def finish_model_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, cpu: dict, gpu: dict
) -> argparse.Namespace:
    """--smoke fills in --models/--steps/--warmup left unset; `args.names`: the chosen models."""
    if args.smoke:
        args.models = args.models or ("llama-1b" if args.gpu else "tiny")
        args.steps = args.steps or 2
        args.warmup = 1 if args.warmup is None else args.warmup
    args.warmup = 2 if args.warmup is None else args.warmup
    table = gpu if args.gpu else cpu
    args.names = args.models.split(",") if args.models else list(table)
    unknown = [n for n in args.names if n not in table]
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {list(table)}")
    if args.warmup < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--warmup and --steps must be >= 1")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (--smoke fills in --models/--steps/--warmup left unset)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--data", default=None, help="data directory (manifest.json)")
    parser.add_argument(
        "--build-dir",
        default=None,
        help="without --data: build (once) and use the benchmark dataset here, never the demo "
        f"dataset (default: the demo dataset if present, else {BUILD_DIR.relative_to(REPO)})",
    )
    return finish_model_args(parser, parser.parse_args(argv), CPU_MODELS, GPU_MODELS)


def start(args: argparse.Namespace) -> bool:
    """Logging for a benchmark run (bench and data_pipeline at INFO); False (after saying so on
    stderr) when --gpu is asked without CUDA. Shared by bench/train.py and bench/finetune.py."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("bench", "data_pipeline"):
        logging.getLogger(name).setLevel(logging.INFO)
    import torch

    if args.gpu and not torch.cuda.is_available():
        print("--gpu needs CUDA", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run every selected model; print the table and the `BENCH_JSON` line."""
    args = parse_args(argv)
    if not start(args):
        return 2
    import torch

    table = GPU_MODELS if args.gpu else CPU_MODELS
    data = resolve_data(args.data, args.build_dir)
    rows = []
    for name in args.names:
        steps = args.steps or (10 if name == "tiny" or args.gpu else 4)
        rows.append(bench_model(name, table[name], data, steps, args.warmup))
    print_table(rows)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    record = {"bench": "train", "device": device, "data": str(data), "results": rows}
    print("BENCH_JSON " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
