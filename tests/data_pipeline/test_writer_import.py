"""The writer's import (torch + megatron.core, seconds) runs alongside tokenizer training in a
child process, and is shown in the log, the summary table and the manifest timings."""

from __future__ import annotations

import json

from dp_helpers import make_cfg, run_cli, write_jsonl

from data_pipeline.listing import list_sources
from data_pipeline.megatron_io import WriterImport
from data_pipeline.progress import summary_table
from data_pipeline.tokenizer_step import train_on_sample


def _import_at(seconds: float, ended: float, other_ended: float | None) -> WriterImport:
    writer = WriterImport()
    writer.seconds, writer.ended, writer.other_ended = seconds, ended, other_ended
    return writer


def test_waited_time():
    assert WriterImport().waited_s() == 0.0  # never loaded
    assert _import_at(6.0, 100.0, None).waited_s() == 6.0  # nothing ran alongside
    assert _import_at(6.0, 100.0, 98.5).waited_s() == 1.5  # training ended 1.5 s earlier
    assert _import_at(6.0, 100.0, 103.0).waited_s() == 0.0  # hidden behind training
    assert _import_at(6.0, 100.0, 10.0).waited_s() == 6.0  # at most the import itself


def _manifest(timings: dict) -> dict:
    return {
        "totals": {"num_docs": 2, "num_bytes": 10, "num_tokens": 6},
        "timings": {"total_s": 9.0, "tokenizer_s": 5.0, "shards_s": 1.0, **timings},
        "tokenizer": {"type": "bpe", "vocab_size": 400, "eod_id": 2, "sha256": "ab" * 32},
        "shards": [{}],
        "skipped": {"counts": {}, "examples": {}},
    }


def test_summary_row():
    hidden = {"megatron_import_s": 6.0, "megatron_wait_s": 0.5, "tokenizer_train_s": 4.5}
    row = "6.0 s, alongside tokenizer training (added 0.5 s to the wall time)"
    assert row in summary_table(_manifest(hidden), 1, 0)
    assert "9.0 s (tokenizer 5.0 s incl. training 4.5 s, shards 1.0 s)" in summary_table(
        _manifest(hidden), 1, 0
    )
    serial = {"megatron_import_s": 6.0, "megatron_wait_s": 6.0}
    assert "megatron import | 6.0 s (torch + megatron.core" in summary_table(
        _manifest(serial), 1, 0
    )
    assert "megatron import | n/a" in summary_table(_manifest({}), 1, 0)  # older manifests


def test_cli_imports_alongside_training(tmp_path, texts):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts[:15])
    out = tmp_path / "out"
    args = [f"output.dir={out}", "tokenizer.vocab_size=400", "tokenizer.sample_bytes=100000"]
    proc = run_cli("data_pipeline", f"input.paths=[{corpus}]", *args, "progress=false")
    assert proc.returncode == 0, proc.stderr
    assert "alongside tokenizer training (in a child process)" in proc.stderr
    assert (
        "megatron import | " in proc.stderr and "alongside tokenizer training (added" in proc.stderr
    )
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    assert timings["megatron_import_s"] > 0.2  # a fresh process really imports torch
    assert 0 <= timings["megatron_wait_s"] < timings["megatron_import_s"]
    assert timings["tokenizer_s"] > timings["tokenizer_train_s"] > 0
    # the model trained in the child is the one an in-process training gives
    cfg = make_cfg(
        [corpus], tmp_path / "x", tokenizer__vocab_size=400, tokenizer__sample_bytes=100_000
    )
    assert (
        train_on_sample(cfg, list_sources(cfg.input))[0] == (out / "tokenizer.model").read_bytes()
    )


def test_cli_training_error_in_the_child_exits_2(tmp_path, texts):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts[:3])
    args = [f"output.dir={tmp_path / 'out'}", "tokenizer.vocab_size=30000", "progress=false"]
    proc = run_cli("data_pipeline", f"input.paths=[{corpus}]", *args)
    assert proc.returncode == 2, proc.stderr
    assert "tokenizer.vocab_size=30000 is too large for this corpus" in proc.stderr
    assert "Traceback" not in proc.stderr
