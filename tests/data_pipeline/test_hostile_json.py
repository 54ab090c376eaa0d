"""Hostile JSONL lines (deep nesting, huge numbers) are one counted bad record, never a crash."""

from __future__ import annotations

import json

import pytest
from dp_helpers import make_cfg, read_docs, run_cli

from data_pipeline.prepare import run_prepare
from data_pipeline.records import MAX_JSON_DEPTH, parse_record

GOOD = [b'{"text": "good one"}\n', b'{"text": "good two"}\n']
HOSTILE = {
    "deep_array": b"[" * 100_000 + b"\n",  # RecursionError in json.loads before the fix
    "deep_in_object": b'{"text": "x", "meta": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001 + b"\n",
    "huge_int": b'{"text": "x", "id": 1' + b"0" * 5000 + b"}\n",  # over 4300 digits
}


def _nested(depth: int) -> bytes:
    """An object whose arrays nest `depth` levels in all (the object counts as one)."""
    inner = depth - 1
    return b'{"text": "ok", "m": ' + b"[" * inner + b"]" * inner + b"}\n"


def test_parse_record_reasons():
    assert parse_record("jsonl", HOSTILE["deep_array"], "text") == (None, "too_deep")
    assert parse_record("jsonl", HOSTILE["deep_in_object"], "text") == (None, "too_deep")
    assert parse_record("jsonl", HOSTILE["huge_int"], "text") == (None, "malformed_json")
    assert parse_record("jsonl", _nested(MAX_JSON_DEPTH), "text") == ("ok", None)
    assert parse_record("jsonl", _nested(MAX_JSON_DEPTH + 1), "text") == (None, "too_deep")
    # brackets inside strings are text, not nesting (code has many)
    code = json.dumps({"text": "[" * 100_000 + '\\"{' * 1000}).encode() + b"\n"
    assert parse_record("jsonl", code, "text")[1] is None
    odd = b'{"text": "x", "a": 1e999999, "b": NaN, "c": -Infinity, "d": 1' + b"0" * 4000 + b"}\n"
    assert parse_record("jsonl", odd, "text") == ("x", None)


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_counts_hostile_lines(tmp_path, sp_model, workers):
    path = tmp_path / "in.jsonl"
    first = HOSTILE["deep_array"]  # as the first line too: not mistaken for a JSON array file
    path.write_bytes(
        first + GOOD[0] + HOSTILE["deep_in_object"] + HOSTILE["huge_int"] + GOOD[1] + first
    )
    cfg = make_cfg([path], tmp_path / "out", sp_model, workers=workers, batch_bytes=1024)
    out = run_prepare(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["counts"] == {"too_deep": 3, "malformed_json": 1}
    assert manifest["skipped"]["examples"]["too_deep"] == [f"{path}:{n}" for n in (1, 3, 6)]
    assert manifest["totals"]["num_docs"] == 2 and len(read_docs(out)) == 2


def test_cli_fail_names_file_and_line(tmp_path, sp_model):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD[0] + GOOD[1] + HOSTILE["deep_array"])
    proc = run_cli(
        "data_pipeline",
        f"input.paths=[{path}]",
        f"tokenizer.model={sp_model}",
        f"output.dir={tmp_path / 'out'}",
        "input.on_error=fail",
        "progress=false",
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{path}:3: the line nests JSON arrays/objects more than" in proc.stderr
    assert "(too_deep)" in proc.stderr and "Traceback" not in proc.stderr
