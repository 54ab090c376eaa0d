"""Every input format gives the same documents: jsonl(.gz/.zst), parquet, text, HF datasets."""

from __future__ import annotations

import gzip
import json
import time

import pytest
import sentencepiece as spm
from dp_helpers import make_cfg, read_docs, write_jsonl

from data_pipeline.errors import ConfigError
from data_pipeline.prepare import run_prepare


@pytest.fixture(scope="module")
def expected(sp_model, texts):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    return [ids + [sp.eos_id()] for ids in sp.encode(texts)]


def _run(tmp_path, paths, sp_model, **kw):
    return read_docs(run_prepare(make_cfg(paths, tmp_path / "out", sp_model, **kw)))


def test_compressed_jsonl(tmp_path, sp_model, texts, expected):
    import zstandard

    half = len(texts) // 2
    plain = write_jsonl(tmp_path / "a.jsonl", texts[:half]).read_bytes()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(plain))
    rest = write_jsonl(tmp_path / "b.jsonl", texts[half:]).read_bytes()
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(rest))
    paths = [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.zst"]
    assert _run(tmp_path, paths, sp_model, output__num_shards=3) == expected


def test_parquet_split_by_rows(tmp_path, sp_model, texts, expected):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(len(texts))), "content": texts})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=7)
    docs = _run(
        tmp_path,
        [tmp_path / "c.parquet"],
        sp_model,
        output__num_shards=4,
        input__text_key="content",
    )
    assert docs == expected
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4


def test_text_files_and_lines(tmp_path, sp_model, texts, expected):
    folder = tmp_path / "src"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc_{i:03d}.py").write_text(text)
    (folder / "notes.md").write_text("excluded by input.include")
    docs = _run(tmp_path, [folder], sp_model, input__include=["*.py"], output__num_shards=2)
    assert docs == expected

    lines = [t for t in texts[:2]]  # prose without newlines: one document per line
    (tmp_path / "lines.txt").write_text("\r\n".join(lines) + "\n")
    cfg = make_cfg(
        [tmp_path / "lines.txt"], tmp_path / "out_lines", sp_model, input__text_unit="line"
    )
    assert read_docs(run_prepare(cfg)) == expected[:2]


def test_hf_dataset_saved_to_disk(tmp_path, sp_model, texts, expected):
    import datasets

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "hf"))
    assert _run(tmp_path, [tmp_path / "hf"], sp_model, output__num_shards=3) == expected


def test_hf_hub_name_fails_fast_offline(tmp_path, sp_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"hub dataset but HF_HUB_OFFLINE=1 \(offline\)"):
        run_prepare(make_cfg(["hf:someone/some_corpus"], tmp_path / "o", sp_model))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError, match=r"127.0.0.1:9 cannot be reached"):
        run_prepare(make_cfg(["hf:someone/some_corpus"], tmp_path / "o", sp_model))
    assert time.monotonic() - started < 10


def test_folder_listing_order_include_exclude(tmp_path):
    from data_pipeline.config import InputConfig
    from data_pipeline.listing import list_sources

    for rel in ["b/x.py", "a/y.py", "a/sub/w.py", "skip/z.py", "z.py", "a/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    inp = InputConfig(paths=[str(tmp_path)], include=["*.py"], exclude=["skip/*"])
    found = [str(s.path)[len(str(tmp_path)) + 1 :] for s in list_sources(inp)]
    assert found == ["a/sub/w.py", "a/y.py", "b/x.py", "z.py"]
    inp = InputConfig(paths=[str(tmp_path)], include=["a/*.py"])
    assert [s.path.rsplit("/", 2)[-2:] for s in list_sources(inp)] == [
        ["sub", "w.py"],
        ["a", "y.py"],
    ]
    with pytest.raises(ConfigError, match=r"holds no file matching input.include=\['\*.md'\]"):
        list_sources(InputConfig(paths=[str(tmp_path)], include=["*.md"]))
