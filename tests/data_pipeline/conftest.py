"""Fixtures for the data pipeline tests: a small real corpus and a small trained tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_helpers import corpus_texts, write_jsonl

from data_pipeline.config import TokenizerConfig
from data_pipeline.tokenizer import train_model


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """The small corpus (~300 KB, ~60 documents)."""
    return corpus_texts()


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    """The small corpus as one JSONL file."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    """A 512-piece Llama-style BPE model trained once per session on the small corpus."""
    path = tmp_path_factory.mktemp("tok") / "small.model"
    path.write_bytes(train_model(TokenizerConfig(vocab_size=512), texts))
    return path
