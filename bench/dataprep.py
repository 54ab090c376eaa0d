"""Data-preparation benchmark: the command a user runs, end to end, beside its stages, the bare
SentencePiece ceiling and, optionally, Megatron-LM's own tools/preprocess_data.py.

    .venv/bin/python bench/dataprep.py [--paths FILE ...] [--model M] [--workers 2] [--repeat 3]
        [--vocab-size 8192] [--limit-mb MB] [--megatron MEGATRON_LM_DIR]

Input (default): the embedded corpus (the running Python's standard-library .py files, the
files `input=stdlib_code` reads, in its order) written as one JSONL file, one {"text": ...}
object per file (files that are not UTF-8 or blank are left out), so that reading *and JSON
parsing* are in every figure and Megatron's preprocess_data.py can read the same file.
--limit-mb keeps only the first MB of it (smoke runs). --paths benchmarks your own files instead.

Each run is a fresh process; the kinds are interleaved (ours, megatron, ceiling, ours, ...) and
the median of --repeat runs is reported:
  ours      `python -m data_pipeline input.paths=[...] workers=N`, as a subprocess: wall time,
            input MB/s (on-disk input bytes / wall time), peak memory (RSS summed over the whole
            process tree, sampled every 50 ms with psutil; pages shared by forked workers count
            once per process). Each run trains its tokenizer (as a user's first run does) unless
            --model is given; the stages come from its manifest.json (tokenizer training, the
            writer's megatron-core import, the shard stage).
  ceiling   bare SentencePiece on the same input: read the file(s), json.loads each line, then
            `encode(batch, num_threads=N)`, timed from the first read to the last id (the model
            load and imports excluded), with the model of our first run.
  megatron  (--megatron DIR) `DIR/tools/preprocess_data.py --input JSONL --tokenizer-type
            SentencePieceTokenizer --tokenizer-model OUR_MODEL --append-eod --workers N`, run
            unmodified with the installed megatron-core (bench/dataprep_megatron.py; it stubs one
            triton-only module that megatron.training imports when triton is missing). With
            --megatron our runs write one shard (output.num_shards=1), so its .bin and .idx are
            compared byte for byte with ours (the table says what differs if they are not
            equal), and, unless --model is given, ours also runs with our first run's model
            given (tokenizer=pretrained): Megatron's task, which includes no training.
Prints a table, then one JSON line (prefix `BENCH_JSON `).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dataprep_megatron  # bench/, this script's folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STDLIB_INPUT = {
    "name": "stdlib_code",
    "paths": ["stdlib:"],
    "format": "text",
    "include": ["*.py"],
    "exclude": ["site-packages/*", "dist-packages/*"],
}
SAMPLE_S = 0.05


def write_stdlib_jsonl(path: Path, limit_bytes: int | None) -> Path:
    """The embedded corpus as JSONL (see the module doc), at most `limit_bytes` on disk."""
    from data_pipeline.config import InputConfig
    from data_pipeline.listing import list_sources

    size = 0
    with open(path, "w", encoding="utf-8") as out:
        for src in list_sources(InputConfig(**STDLIB_INPUT)):
            try:
                text = Path(src.path).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
            line = json.dumps({"text": text}) + "\n" if text.strip() else ""
            if limit_bytes is not None and size + len(line) > limit_bytes and size:
                break
            out.write(line)
            size += len(line)
    return path


def run_sampled(cmd: list[str], log: Path, env: dict | None = None) -> dict[str, Any]:
    """Run `cmd` (cwd: the repo); wall time and peak RSS summed over its process tree."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    peak, stop = [0], threading.Event()
    with open(log, "w") as sink:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)

        def sample() -> None:
            while not stop.wait(SAMPLE_S):
                total = 0
                try:
                    for p in [root, *root.children(recursive=True)]:
                        total += p.memory_info().rss
                except psutil.Error:  # a process ended between listing and reading
                    continue
                peak[0] = max(peak[0], total)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    return {"rc": code, "wall_s": wall, "peak_mem_mb": peak[0] / 1e6, "log": str(log)}


def _fail(what: str, run: dict) -> None:
    tail = Path(run["log"]).read_text()[-3000:]
    sys.exit(f"{what} failed (exit {run['rc']}):\n{tail}")


def run_ours(args: argparse.Namespace, inputs: list[str], out: Path, model: str | None) -> dict:
    """One `python -m data_pipeline` run into a fresh `out`; its wall time, memory and stages."""
    paths = ",".join(f"'{p}'" for p in inputs)
    cmd = [sys.executable, "-m", "data_pipeline", f"input.paths=[{paths}]"]
    cmd += [f"output.dir={out}", f"workers={args.workers}", "progress=false"]
    if model:
        cmd += ["tokenizer=pretrained", f"tokenizer.model={model}"]
    else:
        cmd += [f"tokenizer.vocab_size={args.vocab_size}"]
    if args.megatron:  # one shard, so that .idx files can be compared byte for byte too
        cmd += ["output.num_shards=1"]
    run = run_sampled(cmd, out.with_suffix(".log"))
    if run["rc"] != 0:
        _fail("python -m data_pipeline", run)
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["timings"]
    run.update({k: timings.get(k, 0.0) for k in ("tokenizer_s", "tokenizer_train_s", "shards_s")})
    run.update({k: timings.get(k, 0.0) for k in ("megatron_import_s", "megatron_wait_s")})
    run.update(encoder=manifest["encoder"]["name"], docs=manifest["totals"]["num_docs"])
    run.update(tokens=manifest["totals"]["num_tokens"], out=str(out))
    run["shards"] = [str(out / s["prefix"]) for s in manifest["shards"]]
    return run


def child_ceiling(inputs: list[str], model: str, threads: int) -> dict:
    """Bare SentencePiece: read + json.loads every line (or our readers for non-JSONL inputs),
    then encode(batch, num_threads); timed from the first read to the last id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    started = time.perf_counter()
    docs = tokens = 0
    for batch in _text_batches(inputs):
        for ids in sp.encode(batch, num_threads=threads):
            docs, tokens = docs + 1, tokens + len(ids) + 1
    return {"seconds": time.perf_counter() - started, "docs": docs, "tokens": tokens}


def _texts(inputs: list[str]):
    """Document texts of `inputs`: bare json.loads for .jsonl files, our readers otherwise."""
    for path in inputs:
        if path.endswith(".jsonl"):
            with open(path, "rb") as f:
                for line in f:
                    try:
                        yield json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):  # a bad line: skipped, as we do
                        continue
            continue
        from data_pipeline.config import InputConfig
        from data_pipeline.listing import list_sources
        from data_pipeline.readers import iter_records
        from data_pipeline.records import parse_record

        inp = InputConfig(paths=[path])
        for src in list_sources(inp):
            for _, payload in iter_records(src, inp):
                text, _ = parse_record(src.record_kind, payload, inp.text_key)
                if text is not None:
                    yield text


def _text_batches(inputs: list[str], batch_chars: int = 8_000_000):
    batch, size = [], 0
    for text in _texts(inputs):
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def run_ceiling(args: argparse.Namespace, inputs: list[str], model: str, log: Path) -> dict:
    """One ceiling child process (its own timing; wall and memory of the whole child)."""
    child = json.dumps({"inputs": inputs, "model": model, "threads": args.workers})
    run = run_sampled([sys.executable, __file__, "--child-ceiling", child], log)
    if run["rc"] != 0:
        _fail("the SentencePiece ceiling", run)
    run.update(json.loads(Path(log).read_text().strip().splitlines()[-1]))
    return run


def run_megatron(args: argparse.Namespace, jsonl: str, model: str, out: Path) -> dict:
    """One preprocess_data.py run into `out` (a fresh dir); wall time, memory, output prefix."""
    out.mkdir(parents=True)
    cmd = dataprep_megatron.command(args.megatron, jsonl, model, str(out / "mg"), args.workers)
    run = run_sampled(cmd, out.with_suffix(".log"))
    run["prefix"] = str(out / f"mg{dataprep_megatron.OUTPUT_SUFFIX}")
    if run["rc"] != 0:
        run["error"] = dataprep_megatron.error_line(Path(run["log"]).read_text(), run["rc"])
    return run


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _ours_summary(runs: list[dict], mb: float) -> dict[str, Any] | None:
    """Medians of our runs (None for no runs)."""
    if not runs:
        return None
    keys = ("wall_s", "peak_mem_mb", "tokenizer_s", "tokenizer_train_s", "shards_s")
    med = {k: round(_median(runs, k), 3) for k in (*keys, "megatron_import_s", "megatron_wait_s")}
    return {
        **med,
        "mb_s": round(mb / med["wall_s"], 3),
        "shard_mb_s": round(mb / max(med["shards_s"], 1e-9), 3),
        "encoder": runs[0]["encoder"],
        "walls_s": [round(r["wall_s"], 2) for r in runs],
    }


def _summary(args, inputs: list[str], input_bytes: int, runs: dict[str, list]) -> dict[str, Any]:
    """The BENCH_JSON record: medians per kind of run."""
    mb = input_bytes / 1e6
    seconds = _median(runs["ceiling"], "seconds")
    return {
        "bench": "dataprep",
        "input": "stdlib JSONL" if not args.paths else inputs,
        "input_mb": round(mb, 3),
        "docs": runs["ours"][0]["docs"],
        "workers": args.workers,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ours": _ours_summary(runs["ours"], mb),
        "ours_model_given": _ours_summary(runs["ours_model_given"], mb),
        "ceiling": {
            "seconds": round(seconds, 3),
            "mb_s": round(mb / seconds, 3),
            "threads": args.workers,
            "peak_mem_mb": round(_median(runs["ceiling"], "peak_mem_mb"), 1),
        },
        "megatron": _megatron_summary(runs["megatron"], mb) if args.megatron else None,
    }


def _megatron_summary(runs: list[dict], mb: float) -> dict[str, Any]:
    """Medians of Megatron's runs and the comparison, or the first run's error."""
    if any("error" in r for r in runs):
        return {"error": next(r["error"] for r in runs if "error" in r)}
    wall = _median(runs, "wall_s")
    return {
        "wall_s": round(wall, 3),
        "mb_s": round(mb / wall, 3),
        "peak_mem_mb": round(_median(runs, "peak_mem_mb"), 1),
        "identical": all(r["identical"] for r in runs),
        "detail": runs[-1]["detail"],
    }


def print_table(s: dict[str, Any]) -> None:
    """The human-readable table of a _summary record."""
    ours, ceil, mg = s["ours"], s["ceiling"], s["megatron"]
    print(
        f"input: {s['input']}, {s['input_mb']:.1f} MB on disk, {s['docs']:,} docs; "
        f"workers={s['workers']}; median of {s['repeat']}; {s['cpus']} CPUs, "
        f"load {s['load_avg_1m']}"
    )
    print(f"{'run':<44}{'wall s':>8}{'in MB/s':>9}{'peak MB':>9}  notes")

    def row(name: str, wall: float, mbs: float | None, mem: float | None, note: str) -> None:
        mbs_s = f"{mbs:9.2f}" if mbs is not None else " " * 9
        mem_s = f"{mem:9.0f}" if mem is not None else " " * 9
        print(f"{name:<44}{wall:8.2f}{mbs_s}{mem_s}  {note}")

    runs = "/".join(f"{w:.1f}" for w in ours["walls_s"])
    row("ours: python -m data_pipeline (end to end)", ours["wall_s"], ours["mb_s"],
        ours["peak_mem_mb"], f"encoder {ours['encoder']}; runs {runs} s")  # fmt: skip
    ready = f"tokenizer ready {ours['tokenizer_s']:.2f} s after the start (listing incl.)"
    row("  tokenizer training", ours["tokenizer_train_s"], None, None, ready)
    added = f"added {ours['megatron_wait_s']:.2f} s (the rest alongside training)"
    if ours["megatron_wait_s"] >= ours["megatron_import_s"]:
        added = "before the shard stage (no training to overlap)"
    row("  megatron-core import (writer)", ours["megatron_import_s"], None, None, added)
    row("  shard stage", ours["shards_s"], ours["shard_mb_s"], None,
        f"{ours['shard_mb_s'] / ceil['mb_s']:.2f}x the ceiling")  # fmt: skip
    if given := s["ours_model_given"]:
        row("ours, tokenizer given (Megatron's task)", given["wall_s"], given["mb_s"],
            given["peak_mem_mb"], f"shard stage {given['shards_s']:.2f} s")  # fmt: skip
    if mg and "error" in mg:
        print(f"{'megatron: tools/preprocess_data.py':<44}  failed: {mg['error']}")
    elif mg:
        same = "yes" if mg["identical"] else "NO"
        row("megatron: tools/preprocess_data.py", mg["wall_s"], mg["mb_s"], mg["peak_mem_mb"],
            f"output identical to ours: {same} ({mg['detail']})")  # fmt: skip
    row(f"sentencepiece ceiling ({ceil['threads']} threads)", ceil["seconds"], ceil["mb_s"],
        ceil["peak_mem_mb"], "read + json.loads + encode(batch); model load excluded")  # fmt: skip


def parse_args() -> argparse.Namespace:
    """Command-line options (see the module doc)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paths", nargs="+", help="input files (default: the stdlib JSONL)")
    parser.add_argument("--model", help="SentencePiece model (default: each run trains one)")
    parser.add_argument("--workers", type=int, default=2, help="our workers = SP threads")
    parser.add_argument("--repeat", type=int, default=3, help="runs per kind (median)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="trained model's vocab")
    parser.add_argument("--limit-mb", type=float, help="keep the first MB of the stdlib JSONL")
    parser.add_argument("--megatron", help="Megatron-LM checkout: also run its preprocess_data")
    return parser.parse_args()


def check_args(args: argparse.Namespace) -> None:
    """Exit with a clear message on options that cannot work, before any run."""
    if args.repeat < 1 or args.workers < 1:
        sys.exit("--repeat and --workers must be >= 1")
    if args.megatron:
        script = Path(args.megatron) / "tools" / "preprocess_data.py"
        if not script.is_file():
            sys.exit(f"--megatron {args.megatron}: no tools/preprocess_data.py there; give a "
                     "Megatron-LM checkout (e.g. git worktree add DIR core_v0.16.1)")  # fmt: skip
        if args.paths and (len(args.paths) != 1 or not args.paths[0].endswith(".jsonl")):
            sys.exit("--megatron reads one .jsonl file: give a single --paths FILE.jsonl")


def run_all(args: argparse.Namespace, inputs: list[str], tmp: Path) -> dict[str, list]:
    """Every run, interleaved as the machine may be shared: ours, then with --megatron ours with
    the model given (Megatron's task: no training) and Megatron's, then the ceiling."""
    runs: dict[str, list] = {"ours": [], "ours_model_given": [], "megatron": [], "ceiling": []}
    model = args.model
    for i in range(args.repeat):
        runs["ours"].append(run_ours(args, inputs, tmp / f"ours{i}", args.model))
        model = model or str(Path(runs["ours"][0]["out"]) / "tokenizer.model")
        if args.megatron:
            if not args.model:
                runs["ours_model_given"].append(run_ours(args, inputs, tmp / f"given{i}", model))
            run = run_megatron(args, inputs[0], model, tmp / f"megatron{i}")
            if "error" not in run:
                compared = dataprep_megatron.compare(runs["ours"][-1]["shards"], run["prefix"])
                run["identical"], run["detail"] = compared
            runs["megatron"].append(run)
        runs["ceiling"].append(run_ceiling(args, inputs, model, tmp / f"ceiling{i}.log"))
    return runs


def main() -> None:
    """Run the interleaved benchmark and print the table and the BENCH_JSON line."""
    if sys.argv[1:2] == ["--child-ceiling"]:
        spec = json.loads(sys.argv[2])
        print(json.dumps(child_ceiling(spec["inputs"], spec["model"], spec["threads"])))
        return
    args = parse_args()
    check_args(args)
    with tempfile.TemporaryDirectory(prefix="bench_dataprep_") as tmp:
        limit = int(args.limit_mb * 1e6) if args.limit_mb else None
        inputs = args.paths or [str(write_stdlib_jsonl(Path(tmp) / "stdlib.jsonl", limit))]
        inputs = [str(Path(p).resolve()) for p in inputs]
        input_bytes = sum(Path(p).stat().st_size for p in inputs)
        summary = _summary(args, inputs, input_bytes, run_all(args, inputs, Path(tmp)))
    print_table(summary)
    print("BENCH_JSON " + json.dumps(summary))


if __name__ == "__main__":
    main()
