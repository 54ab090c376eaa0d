"""Progress bar (MB/s with docs/s and tokens/s) on stderr and the final summary table."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A tqdm bar over input bytes; `tick` is called once per encoded batch."""

    def __init__(self, total_bytes: int, desc: str, enabled: bool, show_tokens: bool = True):
        self.started = time.perf_counter()
        self.docs = 0
        self.tokens = 0
        self.bar = None
        self.show_tokens = show_tokens
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_bytes,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1000,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    def tick(self, raw_bytes: int, docs: int, tokens: int) -> None:
        """Account one batch."""
        self.docs += docs
        self.tokens += tokens
        if self.bar is not None:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            postfix = f"{self.docs / elapsed:,.0f} docs/s"
            if self.show_tokens:
                postfix += f", {self.tokens / elapsed:,.0f} tok/s"
            self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(raw_bytes)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


def _throughput(totals: dict[str, Any], seconds: float) -> str:
    seconds = max(seconds, 1e-9)
    return (
        f"{totals['num_docs'] / seconds:,.0f} docs/s, {totals['num_bytes'] / 1e6 / seconds:,.2f} "
        f"MB/s, {totals['num_tokens'] / seconds:,.0f} tok/s"
    )


def _import_time(timings: dict[str, Any]) -> str:
    """The writer's import (torch + megatron.core): its time and what it added to the wall time."""
    if "megatron_import_s" not in timings:
        return "n/a"
    took, added = timings["megatron_import_s"], timings["megatron_wait_s"]
    if added >= took:
        return f"{took:.1f} s (torch + megatron.core, for the .bin/.idx writer)"
    return f"{took:.1f} s, alongside tokenizer training (added {added:.1f} s to the wall time)"


def _wall_time(timings: dict[str, Any]) -> str:
    """Total time and its parts (tokenizer step: listing, training or loading, and any wait)."""
    trained = timings.get("tokenizer_train_s", 0.0)
    training = f" incl. training {trained:.1f} s" if trained else ""
    return (
        f"{timings['total_s']:.1f} s (tokenizer {timings['tokenizer_s']:.1f} s{training}, "
        f"shards {timings['shards_s']:.1f} s)"
    )


def summary_table(manifest: dict[str, Any], built: int, reused: int) -> str:
    """A plain-text table of the run (logged at the end of `python -m data_pipeline`)."""
    totals, timings, tok = manifest["totals"], manifest["timings"], manifest["tokenizer"]
    rows = [
        ("output", manifest.get("output_dir", "")),
        (
            "tokenizer",
            f"{tok['type']} vocab={tok['vocab_size']} eod={tok['eod_id']} "
            f"sha256={tok['sha256'][:12]}",
        ),
        ("encoder", manifest.get("encoder", {}).get("name", "?")),
        ("shards", f"{len(manifest['shards'])} ({built} built, {reused} reused)"),
        ("documents", f"{totals['num_docs']:,}"),
        ("tokens", f"{totals['num_tokens']:,} (incl. EOD)"),
        ("text MB", f"{totals['num_bytes'] / 1e6:,.2f}"),
        ("bytes/token", f"{totals['num_bytes'] / max(totals['num_tokens'], 1):.2f}"),
        ("wall time", _wall_time(timings)),
        ("megatron import", _import_time(timings)),
        (
            "shard stage",
            _throughput(totals, timings["shards_s"])
            if built and not reused
            else "n/a (shards reused)"
            if not built
            else "mixed (some shards reused)",
        ),
    ]
    counts = manifest["skipped"]["counts"]
    rows.append(("skipped", ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"))
    for reason, examples in manifest["skipped"]["examples"].items():
        rows.append((f"  e.g. {reason}", examples[0]))
    width = max(len(k) for k, _ in rows)
    line = "-" * min(width + 3 + max(len(str(v)) for _, v in rows), 100)
    body = "\n".join(f"{k:<{width}} | {v}" for k, v in rows)
    return f"{line}\n{body}\n{line}"
