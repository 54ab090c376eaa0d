"""inspect and merge commands; the Hydra CLI (defaults, errors naming keys, no outputs/ folder)."""

from __future__ import annotations

import json

import pytest
from dp_helpers import make_cfg, read_docs, run_cli, write_jsonl

from data_pipeline import inspect, merge
from data_pipeline.config import TokenizerConfig
from data_pipeline.errors import OutputError
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import train_model


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory, texts, sp_model):
    root = tmp_path_factory.mktemp("dirs")
    a = write_jsonl(root / "a.jsonl", texts[:10])
    b = write_jsonl(root / "b.jsonl", texts[10:])
    out_a = run_prepare(make_cfg([a], root / "A", sp_model, output__num_shards=2))
    out_b = run_prepare(make_cfg([b], root / "B", sp_model, output__num_shards=3))
    return out_a, out_b


def test_inspect_verifies_and_prints(two_dirs, capsys):
    out_a, _ = two_dirs
    assert inspect.main([str(out_a), "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert "verify: ok (checksums and counts)" in text
    assert "documents: 10" in text and "EOD=True" in text
    assert inspect.main([str(out_a), "--json", "--samples", "0"]) == 0
    stats = json.loads(capsys.readouterr().out)
    manifest = json.loads((out_a / "manifest.json").read_text())
    assert stats["ok"] and stats["documents"] == 10
    assert stats["tokens"] == manifest["totals"]["num_tokens"]


def test_inspect_detects_damage(tmp_path, corpus_jsonl, sp_model, capsys):
    out = run_prepare(make_cfg([corpus_jsonl], tmp_path / "out", sp_model))
    with open(out / "shard_00000.bin", "r+b") as f:
        f.seek(10)
        f.write(b"\x00\x00")
    assert inspect.main([str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == ["shard_00000.bin: sha256 differs from the manifest"]
    assert inspect.main([str(tmp_path)]) == 1  # no manifest.json


def test_merge_dirs(tmp_path, two_dirs, texts, sp_model):
    out_a, out_b = two_dirs
    merged = merge.merge([out_a, out_b], tmp_path / "m1")
    assert read_docs(merged) == read_docs(out_a) + read_docs(out_b)
    manifest = json.loads((merged / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and manifest["totals"]["num_docs"] == len(texts)
    assert inspect.main([str(merged), "--samples", "0"]) == 0
    assert merge.main([str(out_b), "--out", str(tmp_path / "m2"), "--num-shards", "2"]) == 0
    assert read_docs(tmp_path / "m2") == read_docs(out_b)
    assert len(json.loads((tmp_path / "m2" / "manifest.json").read_text())["shards"]) == 2

    other = tmp_path / "other.model"
    other.write_bytes(train_model(TokenizerConfig(vocab_size=400), texts[3:20]))
    out_c = run_prepare(make_cfg([out_a.parent / "a.jsonl"], tmp_path / "C", other))
    with pytest.raises(OutputError, match="made with different tokenizers"):
        merge.merge([out_a, out_c], tmp_path / "m3")


def test_cli_trains_and_writes_no_hydra_outputs(tmp_path, corpus_jsonl):
    out = tmp_path / "out"
    proc = run_cli(
        "data_pipeline",
        "input=files",
        f"input.paths=[{corpus_jsonl}]",
        "workers=2",
        "tokenizer.vocab_size=400",
        "tokenizer.sample_bytes=100000",
        f"output.dir={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "documents" in proc.stderr and "encoder: kitoken" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["workers"] == 2 and manifest["tokenizer"]["vocab_size"] == 400
    proc = run_cli("data_pipeline.inspect", str(out), "--samples", "1")
    assert proc.returncode == 0 and "verify: ok" in proc.stdout


def test_cli_config_errors_name_the_key(tmp_path, corpus_jsonl):
    proc = run_cli("data_pipeline", "workers=0", f"output.dir={tmp_path}/o", cwd=tmp_path)
    assert proc.returncode == 2 and "ConfigError: workers=0: must be >= 1" in proc.stderr
    proc = run_cli(
        "data_pipeline", "input=stdlib_code", f"input.paths=[{corpus_jsonl}]", cwd=tmp_path
    )
    assert proc.returncode == 2 and "drop `input=stdlib_code`" in proc.stderr
    proc = run_cli(
        "data_pipeline", "tokenizer=pretrained", f"output.dir={tmp_path}/o", cwd=tmp_path
    )
    assert proc.returncode == 2 and "tokenizer=pretrained needs tokenizer.model=" in proc.stderr


@pytest.mark.slow
def test_embedded_corpus_subset_end_to_end(tmp_path):
    out = tmp_path / "stdlib"
    proc = run_cli(
        "data_pipeline",
        "input.include=[json/*.py,email/*.py,http/*.py]",
        f"output.dir={out}",
        "tokenizer.vocab_size=1000",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["input"]["name"] == "stdlib_code"
    assert manifest["totals"]["num_docs"] >= 20
    assert all(i["path"].endswith(".py") for i in manifest["inputs"])
    proc = run_cli("data_pipeline.inspect", str(out), "--samples", "2")
    assert proc.returncode == 0 and "EOD=True" in proc.stdout
