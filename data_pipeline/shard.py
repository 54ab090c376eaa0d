"""Build one shard: stream its records, tokenize in worker processes, write it atomically.

The main process reads raw records in order and cuts them into batches of ~batch_bytes; workers
(a multiprocessing Pool whose initializer loads the tokenizer once) parse and encode them; at
most 2*workers batches are in flight and results are consumed in submission order, so memory is
bounded and the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.config import InputConfig
from data_pipeline.diskspace import disk_full_guard
from data_pipeline.errors import DataError
from data_pipeline.instruct.batch import encode_examples
from data_pipeline.instruct.examples import InstructSpec
from data_pipeline.instruct.templates import compile_template
from data_pipeline.listing import Source
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.plan import ShardPlan
from data_pipeline.readers import iter_records
from data_pipeline.records import REASON_TEXT, parse_record
from data_pipeline.tokenizer import Encoder, sha256_file, tmp_suffix, write_atomic

log = logging.getLogger(__name__)
VERIFY_LATER_CHARS = 16384
"""Size limit of the one document per later batch checked against SentencePiece (keeps the check
at a few percent of the encoding time)."""
LOSS_MASK = ".loss_mask"
"""Suffix of a token shard's prefix that names its loss-mask dataset (shard_00000.loss_mask)."""
SHARD_SUFFIXES = (".bin", ".idx", f"{LOSS_MASK}.bin", f"{LOSS_MASK}.idx")
"""Files of one shard (the loss-mask pair only for instruction data)."""
KEEP_EXAMPLES = 20
"""Examples per skip reason kept in a done record (the manifest keeps input.max_examples)."""


@dataclass
class Task:
    """A batch of raw records (of one or several sources), sent to a worker."""

    kinds: list[str]
    payloads: list[Any]
    labels: list[str]
    encoder: str
    verify: int
    raw_bytes: int
    skips: list[tuple[int, str, str]] = field(default_factory=list)
    """(position in payloads, reason, label) of bad inputs found while reading (empty files)."""


@dataclass
class Result:
    """A worker's answer: concatenated ids (EOD after each document) and per-document lengths."""

    ids: np.ndarray
    lengths: np.ndarray
    bad: list[tuple[int, str]]
    num_bytes: int
    mismatch: bool = False
    mask: np.ndarray | None = None
    """Instruction data: the loss mask aligned with `ids` (uint8, 1 = target)."""
    truncated: int = 0
    dropped: int = 0


class EncoderMismatch(RuntimeError):
    """kitoken disagreed with SentencePiece on the verification sample."""


_WORKER: dict[str, Any] = {}


def init_worker(
    model_path: str, encoder: str, text_key: str, eod: int, dtype: str, instruct: Any = None
) -> None:
    """Pool initializer: load the tokenizer (and compile the chat template) once per process."""
    _WORKER.update(
        encoder=Encoder(model_path, encoder), text_key=text_key, eod=eod, dtype=np.dtype(dtype)
    )
    _WORKER["instruct"] = instruct
    if instruct is not None:
        _WORKER["template"] = compile_template(instruct.template)


def _encode_instruct(task: Task) -> Result:
    """encode_task for instruction examples (SentencePiece, with loss masks)."""
    w = _WORKER
    args = (w["instruct"], w["template"], w["encoder"].sp, w["eod"], w["dtype"])
    return Result(**vars(encode_examples(task.kinds, task.payloads, *args)))


def _disagrees(encoder: Encoder, texts: list[str], encoded: list[list[int]], verify: int) -> bool:
    """Compare kitoken's ids with SentencePiece's on a sample: the first `verify` documents, or
    (verify=-1, later batches) the first document of at most VERIFY_LATER_CHARS characters."""
    if verify > 0:
        picks = list(range(min(verify, len(texts))))
    else:
        picks = [i for i, t in enumerate(texts) if len(t) <= VERIFY_LATER_CHARS][:1]
    reference = encoder.encode([texts[i] for i in picks], "sentencepiece")
    return reference != [encoded[i] for i in picks]


def encode_task(task: Task) -> Result:
    """Parse and encode one batch (runs in a worker, or inline with workers=1)."""
    if _WORKER["instruct"] is not None:
        return _encode_instruct(task)
    encoder: Encoder = _WORKER["encoder"]
    texts, bad = [], []
    for i, (kind, payload) in enumerate(zip(task.kinds, task.payloads, strict=True)):
        text, reason = parse_record(kind, payload, _WORKER["text_key"])
        if reason is None:
            texts.append(text)
        else:
            bad.append((i, reason))
    encoded = encoder.encode(texts, task.encoder)
    mismatch = False
    if task.encoder == "kitoken" and texts:
        mismatch = _disagrees(encoder, texts, encoded, task.verify)
    eod = _WORKER["eod"]
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        flat.append(eod)
    return Result(
        ids=np.array(flat, dtype=_WORKER["dtype"]),
        lengths=np.fromiter((len(ids) + 1 for ids in encoded), np.int64, len(encoded)),
        bad=bad,
        num_bytes=sum(len(t.encode("utf-8")) for t in texts),
        mismatch=mismatch,
    )


@dataclass
class ShardContext:
    """What every shard build needs (shared across shards of one run)."""

    out_dir: Path
    sources: list[Source]
    inp: InputConfig
    model_path: str
    tokenizer_sha256: str
    settings: dict
    eod: int
    dtype: str
    batch_bytes: int
    verify_docs: int
    workers: int
    pool: Any = None
    instruct: InstructSpec | None = None
    """Instruction data (input.format=chat|prompt_completion): loss-mask shards are written."""


def _batches(plan: ShardPlan, ctx: ShardContext, encoder: str) -> Iterator[Task]:
    task = Task([], [], [], encoder, ctx.verify_docs, 0)
    for piece in plan.pieces:
        src = ctx.sources[piece.source]
        kind = src.record_kind
        seen = 0
        for number, payload in iter_records(src, ctx.inp, piece.start, piece.end):
            seen += 1
            task.kinds.append(kind)
            task.payloads.append(payload)
            task.labels.append(src.label(number))
            task.raw_bytes += len(payload) if isinstance(payload, bytes) else len(str(payload))
            if task.raw_bytes >= ctx.batch_bytes:
                yield task
                task = Task([], [], [], encoder, -1, 0)
        if seen == 0 and piece.start == 0 and (not src.splittable or src.size == 0):
            if src.kind == "pyfuncs":  # a module without a documented function: nothing wrong
                continue
            task.skips.append((len(task.payloads), "empty_file", src.path))
    if task.payloads or task.skips:
        yield task


def _ordered_results(tasks: Iterator[Task], ctx: ShardContext) -> Iterator[tuple[Task, Result]]:
    if ctx.pool is None:
        for task in tasks:
            yield task, encode_task(task)
        return
    pending: collections.deque = collections.deque()
    for task in tasks:
        pending.append((task, ctx.pool.apply_async(encode_task, (task,))))
        if len(pending) >= 2 * ctx.workers:
            done_task, future = pending.popleft()
            yield done_task, future.get()
    while pending:
        done_task, future = pending.popleft()
        yield done_task, future.get()


class _Skips:
    def __init__(self, on_error: str) -> None:
        self.on_error = on_error
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, label: str) -> None:
        if self.on_error == "fail":
            raise DataError(
                f"{label}: {REASON_TEXT[reason]} ({reason}). input.on_error=fail stops here; "
                "fix the input or set input.on_error=skip to skip and count such records."
            )
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < KEEP_EXAMPLES:
            examples.append(label)


def _write(plan: ShardPlan, ctx: ShardContext, encoder: str, tmp: str, tick: Callable) -> dict:
    module = indexed_dataset()
    builder = module.IndexedDatasetBuilder(f"{tmp}.bin", dtype=np.dtype(ctx.dtype).type)
    masks = None
    if ctx.instruct is not None:
        masks = module.IndexedDatasetBuilder(f"{tmp}{LOSS_MASK}.bin", dtype=np.uint8)
    skips = _Skips(ctx.inp.on_error)
    stats = {"num_docs": 0, "num_tokens": 0, "num_bytes": 0}
    counts = {"num_target_tokens": 0, "truncated": 0, "dropped": 0}
    try:
        for task, result in _ordered_results(_batches(plan, ctx, encoder), ctx):
            if result.mismatch:
                raise EncoderMismatch(plan.prefix)
            events = [(pos, 0, reason, label) for pos, reason, label in task.skips]
            events += [(i, 1, reason, task.labels[i]) for i, reason in result.bad]
            for _, _, reason, label in sorted(events):  # input order, so `fail` names the first
                skips.add(reason, label)
            offset = 0
            for length in result.lengths.tolist():
                builder.add_document(result.ids[offset : offset + length], [length])
                if masks is not None:
                    masks.add_document(result.mask[offset : offset + length], [length])
                offset += length
            if masks is not None:
                counts["num_target_tokens"] += int(result.mask.sum(dtype=np.int64))
                counts["truncated"] += result.truncated
                counts["dropped"] += result.dropped
            stats["num_docs"] += len(result.lengths)
            stats["num_tokens"] += len(result.ids)
            stats["num_bytes"] += result.num_bytes
            tick(task.raw_bytes, len(result.lengths), len(result.ids))
    finally:
        builder.data_file.close()
        if masks is not None:
            masks.data_file.close()
    builder.finalize(f"{tmp}.idx")
    if masks is not None:
        masks.finalize(f"{tmp}{LOSS_MASK}.idx")
        stats.update(counts)
    stats["skipped"] = {"counts": skips.counts, "examples": skips.examples}
    return stats


def _remove_tmp(tmp: str) -> None:
    for suffix in SHARD_SUFFIXES:
        if os.path.exists(tmp + suffix):
            os.remove(tmp + suffix)


def done_path(out_dir: Path, prefix: str) -> Path:
    """The completion record written after a shard's files are renamed into place."""
    return out_dir / f"{prefix}.done.json"


def build_shard(plan: ShardPlan, ctx: ShardContext, encoder: str, tick: Callable) -> dict:
    """Write shard `plan` (tmp names, rename, then its done record) and return that record."""
    started = time.perf_counter()
    final = ctx.out_dir / plan.prefix
    tmp = str(ctx.out_dir / f".{plan.prefix}.{tmp_suffix()}")
    try:
        with disk_full_guard(Path(f"{final}.bin"), f"shard {plan.prefix},"):
            stats = _write(plan, ctx, encoder, tmp, tick)
    except EncoderMismatch:
        _remove_tmp(tmp)
        log.warning(
            "%s: kitoken differs from SentencePiece on the verification sample; "
            "rebuilding this shard with SentencePiece",
            plan.prefix,
        )
        return build_shard(plan, ctx, "sentencepiece", tick)
    except BaseException:
        _remove_tmp(tmp)
        raise
    record = {"prefix": plan.prefix, **stats, "input_bytes": plan.input_bytes()}
    if stats["num_docs"] == 0:
        _remove_tmp(tmp)
        record.update(bin_sha256=None, idx_sha256=None, empty=True)
    else:  # renames free no space; the done record below is written by write_atomic (guarded)
        if ctx.instruct is not None:  # the mask first: a token shard never lacks its mask
            os.replace(f"{tmp}{LOSS_MASK}.bin", f"{final}{LOSS_MASK}.bin")
            os.replace(f"{tmp}{LOSS_MASK}.idx", f"{final}{LOSS_MASK}.idx")
            record["loss_mask"] = {
                "prefix": f"{plan.prefix}{LOSS_MASK}",
                "bin_sha256": sha256_file(f"{final}{LOSS_MASK}.bin"),
                "idx_sha256": sha256_file(f"{final}{LOSS_MASK}.idx"),
            }
        os.replace(f"{tmp}.bin", f"{final}.bin")
        os.replace(f"{tmp}.idx", f"{final}.idx")
        record.update(
            bin_sha256=sha256_file(f"{final}.bin"), idx_sha256=sha256_file(f"{final}.idx")
        )
    record.update(
        encoder=encoder,
        tokenizer_sha256=ctx.tokenizer_sha256,
        fingerprint=plan.fingerprint(ctx.sources, ctx.settings),
        elapsed_s=round(time.perf_counter() - started, 3),
    )
    write_atomic(done_path(ctx.out_dir, plan.prefix), json.dumps(record, indent=1).encode())
    return record


def verify_done(plan: ShardPlan, ctx: ShardContext) -> dict | None:
    """The shard's done record if its fingerprint, tokenizer and checksums all match, else None."""
    path = done_path(ctx.out_dir, plan.prefix)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != plan.fingerprint(ctx.sources, ctx.settings):
        return None
    if record.get("tokenizer_sha256") != ctx.tokenizer_sha256:
        return None
    if record.get("empty"):
        return record
    checks = [
        (f"{plan.prefix}.{suffix}", record.get(f"{suffix}_sha256")) for suffix in ("bin", "idx")
    ]
    if ctx.instruct is not None:
        mask = record.get("loss_mask") or {}
        checks += [(f"{mask.get('prefix')}.{s}", mask.get(f"{s}_sha256")) for s in ("bin", "idx")]
    for name, sha in checks:
        file = ctx.out_dir / name
        if not file.is_file() or sha256_file(file) != sha:
            log.warning("%s: %s does not match its done record; rebuilding", plan.prefix, file.name)
            return None
    return record


COMPRESSION_RATIO = 4
"""Assumed raw bytes per byte on disk of a .gz/.zst or parquet input when estimating the work
(max_tasks): an overestimate only leaves the cap to the CPUs."""


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (Slurm, taskset and cgroup cpusets
    restrict it), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def max_tasks(plans: list[ShardPlan], sources: list[Source], batch_bytes: int) -> int:
    """About how many tasks of `batch_bytes` the largest shard of `plans` gives: shards are
    built one after the other, so no more workers than that can be busy at once."""

    def ratio(src: Source) -> int:
        return COMPRESSION_RATIO if src.compression or src.kind == "parquet" else 1

    most = 1
    for plan in plans:
        raw = sum((p.end - p.start) * ratio(sources[p.source]) for p in plan.pieces)
        most = max(most, -(-raw // batch_bytes))
    return most


def worker_count(asked: int, cpus: int, batches: int) -> int:
    """`workers`, capped at the usable CPUs and at the tasks there are; a cap is logged (a
    warning when it is the CPUs). The output bytes do not depend on the number of workers."""
    used = max(1, min(asked, cpus, batches))
    if used < asked:
        why = []
        if cpus < asked:
            why.append(f"this job may use {cpus} CPUs (os.sched_getaffinity)")
        if batches < asked:
            why.append(f"the largest shard to build makes about {batches} task(s) of batch_bytes")
        level = logging.WARNING if cpus < asked else logging.INFO
        log.log(level, "workers=%d asked, using %d: %s", asked, used, " and ".join(why))
    return used


def make_pool(ctx: ShardContext, encoder: str) -> Any:
    """A Pool of ctx.workers processes (None for workers=1: encode inline)."""
    args = (ctx.model_path, encoder, ctx.inp.text_key, ctx.eod, ctx.dtype, ctx.instruct)
    init_worker(*args)  # the inline path and verification reruns use the main process's copy
    if ctx.workers == 1:
        return None
    return multiprocessing.get_context("fork").Pool(ctx.workers, init_worker, args)
