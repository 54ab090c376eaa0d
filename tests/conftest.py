"""Shared pytest fixtures.

`prepared_data` is a small data directory in the format of docs/data_format.md (vocab 512,
~1.5 MB of Python standard-library code, 2 shards), built once per test session by the real
data-preparation job
(`data_pipeline.prepare.run_prepare`), exactly as `python -m data_pipeline` would build it.
`image_text_data` / `image_text_heldout` are image-text dirs (docs/data_format.md, "Image-text
data") of the embedded synthetic corpus, built the same way.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
PREPARED_VOCAB_SIZE = 512
PREPARED_MAX_BYTES = 1_500_000


def stdlib_sample_files(max_bytes: int = PREPARED_MAX_BYTES) -> list[str]:
    """The first top-level standard-library modules (sorted by name) up to `max_bytes`."""
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


def build_prepared_data(out_dir: Path, vocab_size: int = PREPARED_VOCAB_SIZE) -> Path:
    """Run the data-preparation job on a stdlib sample into `out_dir` (2 shards)."""
    from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare

    cfg = PrepareConfig(
        input=InputConfig(name="stdlib_small", paths=stdlib_sample_files(), format="text"),
        tokenizer=TokenizerConfig(vocab_size=vocab_size),
        output=OutputConfig(dir=str(out_dir), num_shards=2),
        workers=1,
        progress=False,
    )
    return run_prepare(cfg)


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete data directory (tokenizer.model, shards, manifest.json) for training tests."""
    return build_prepared_data(tmp_path_factory.mktemp("prepared") / "stdlib_small")


@pytest.fixture(scope="session")
def instruct_data(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Instruction data (tests/sft/_data.py): two shards (40 + 30 prompt/completion examples)
    with loss masks and `prepared_data`'s real tokenizer, for the SFT and LoRA runs."""
    from tests.sft._data import build_instruct_dir

    return build_instruct_dir(tmp_path_factory.mktemp("sft") / "instruct", prepared_data)


IMAGE_TEXT_TRAIN_COUNT = 600
IMAGE_TEXT_HELDOUT_COUNT = 64
IMAGE_TEXT_SIZE = 32
IMAGE_TEXT_VOCAB_SIZE = 512


def build_image_text_data(
    out_dir: Path,
    subset: str = "train",
    count: int = IMAGE_TEXT_TRAIN_COUNT,
    tokenizer_model: Path | None = None,
    size: int = IMAGE_TEXT_SIZE,
) -> Path:
    """Run the data-preparation job on the synthetic image-caption corpus into `out_dir`
    (`input=synthetic_images`); trains a 512-piece tokenizer unless `tokenizer_model` is given."""
    from data_pipeline.config import (
        ImageConfig,
        InputConfig,
        OutputConfig,
        PrepareConfig,
        TokenizerConfig,
    )
    from data_pipeline.prepare import run_prepare

    cfg = PrepareConfig(
        input=InputConfig(
            name="synthetic_images",
            format="synthetic_images",
            subset=subset,
            synthetic_count=count,
        ),
        tokenizer=TokenizerConfig(
            model=str(tokenizer_model) if tokenizer_model else None,
            vocab_size=IMAGE_TEXT_VOCAB_SIZE,
        ),
        output=OutputConfig(dir=str(out_dir)),
        images=ImageConfig(size=size),
        progress=False,
    )
    return run_prepare(cfg)


@pytest.fixture(scope="session")
def image_text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image-text data dir: 600 synthetic train images of 32x32 (one shard), a 512-piece
    tokenizer trained on their captions (reserving <image>)."""
    return build_image_text_data(tmp_path_factory.mktemp("image_text") / "synthetic_images")


@pytest.fixture(scope="session")
def image_text_heldout(image_text_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The held-out subset (64 images of unseen colour-shape pairs) with image_text_data's
    tokenizer."""
    return build_image_text_data(
        tmp_path_factory.mktemp("image_text") / "synthetic_images_heldout",
        subset="heldout",
        count=IMAGE_TEXT_HELDOUT_COUNT,
        tokenizer_model=image_text_data / "tokenizer.model",
    )
