"""Shared pytest fixtures.

`prepared_data` is a small data directory in the format of docs/data_format.md (vocab 512, ~0.4M tokens of
Python standard-library code), built once per test session by the real data-preparation job.
"""

from __future__ import annotations

import os
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


def _build_prepared_data(out_dir: Path) -> Path:
    from tests._prepared import build_small_dataset

    return build_small_dataset(out_dir, vocab_size=PREPARED_VOCAB_SIZE)


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete data directory (tokenizer.model, shards, manifest.json) for training tests."""
    return _build_prepared_data(tmp_path_factory.mktemp("prepared") / "stdlib_small")
