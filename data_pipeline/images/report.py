"""Skip accounting, the image-text manifest and the summary table of an image-text job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_pipeline.config import PrepareConfig
from data_pipeline.errors import DataError
from data_pipeline.images.process import ENCODING, PREPROCESSING
from data_pipeline.images.sources import ImageInput, source_name
from data_pipeline.manifest import FORMAT_VERSION

KIND = "image_text"
"""manifest["kind"] of image-text data (a text manifest has no kind)."""


class Skips:
    """Counts of skipped samples per reason with the first examples; with `fail`, the first bad
    sample raises a DataError naming it instead."""

    def __init__(self, fail: bool, max_examples: int) -> None:
        self.fail = fail
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, label: str, detail: str) -> None:
        """Count one skipped sample (or raise with input.on_error=fail)."""
        if self.fail:
            raise DataError(
                f"{label}: {reason} ({detail}). Fix or remove it, or set input.on_error=skip to "
                "skip such samples (they are counted in the manifest)."
            )
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(label)


def _synthetic_settings(cfg: PrepareConfig) -> dict[str, Any] | None:
    if cfg.input.format != "synthetic_images":
        return None
    from data_pipeline.images.synthetic import settings

    inp = cfg.input
    return settings(inp.synthetic_seed, inp.synthetic_count, cfg.images.size, inp.subset)


def build_manifest(
    cfg: PrepareConfig,
    inputs: list[ImageInput],
    shards: list[dict[str, Any]],
    stats: dict[str, int],
    skips: Skips,
    run: dict[str, Any],
) -> dict[str, Any]:
    """manifest.json of an image-text dir (docs/data_format.md, "Image-text data").

    `run` holds the tokenizer `info`, the `image_token_id` and the `timings`.
    """
    image_text = {
        "image_size": cfg.images.size,
        "channels": 3,
        "encoding": ENCODING,
        "preprocessing": dict(PREPROCESSING),
        "image_token": cfg.images.image_token,
        "image_token_id": run["image_token_id"],
        **stats,
        "source": source_name(cfg.input, inputs),
        "skipped": dict(skips.counts),
        "skip_examples": {k: v for k, v in skips.examples.items() if v},
        "synthetic": _synthetic_settings(cfg),
        "shards": shards,
    }
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "tokenizer": run["info"],
        "image_text": image_text,
        "inputs": [{"path": str(i.path), "size": i.size()} for i in inputs],
        "config": cfg.to_dict(),
        "timings": run["timings"],
    }


def summary(manifest: dict[str, Any], out: Path) -> str:
    """A plain-text table of the run (logged at the end)."""
    block, tok, timings = manifest["image_text"], manifest["tokenizer"], manifest["timings"]
    seconds = max(timings["shards_s"], 1e-9)
    rows = [
        ("output", str(out)),
        ("tokenizer", f"{tok['type']} vocab={tok['vocab_size']} sha256={tok['sha256'][:12]}"),
        ("source", block["source"]),
        ("shards", str(len(block["shards"]))),
        ("samples", f"{block['num_samples']:,} ({block['num_samples'] / seconds:,.0f}/s)"),
        ("image", f"{block['image_size']}x{block['image_size']} RGB {block['encoding']}"),
        ("caption tokens", f"{block['num_caption_tokens']:,} (max {block['max_caption_tokens']})"),
        ("wall time", f"{timings['total_s']:.1f} s (tokenizer {timings['tokenizer_s']:.1f} s)"),
        ("skipped", ", ".join(f"{k}={v}" for k, v in block["skipped"].items()) or "none"),
    ]
    rows += [(f"  e.g. {k}", v[0]) for k, v in block["skip_examples"].items()]
    width = max(len(k) for k, _ in rows)
    line = "-" * min(width + 3 + max(len(v) for _, v in rows), 100)
    return line + "\n" + "\n".join(f"{k:<{width}} | {v}" for k, v in rows) + "\n" + line
