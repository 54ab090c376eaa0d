"""Every bad input of issue 2: skipped and counted (file:line), or a clear error naming it."""

from __future__ import annotations

import gzip
import json

import pytest
from dp_helpers import make_cfg, read_docs, run_cli

from data_pipeline.config import TokenizerConfig
from data_pipeline.errors import ConfigError, DataError, OutputError
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import train_model

BAD_LINES = {
    "malformed_json": b'{"text": "unterminated\n',
    "missing_text": b'{"title": "no text field"}\n',
    "non_string_text": b'{"text": 42}\n',
    "invalid_utf8": b'{"text": "bad \xff byte"}\n',
    "empty": b'{"text": ""}\n',
}
GOOD = [b'{"text": "good one"}\n', b'{"text": "good two"}\n', b'{"text": "good three"}\n']


def _bad_jsonl(path):
    lines = [
        GOOD[0],
        BAD_LINES["malformed_json"],  # 2
        BAD_LINES["missing_text"],  # 3
        BAD_LINES["non_string_text"],  # 4
        BAD_LINES["invalid_utf8"],  # 5
        BAD_LINES["empty"],  # 6
        b"\n",  # 7 blank line: empty
        b'{"text": "   "}\n',  # 8 whitespace only: empty
        b"[1, 2]\n",  # 9 not an object: malformed_json
        b'{"text": null}\n',  # 10 missing_text
        b'{"text": "\\ud800"}\n',  # 11 lone surrogate: invalid_utf8
        GOOD[1],
        GOOD[2],
    ]
    path.write_bytes(b"".join(lines))
    return path


def test_skip_counts_every_bad_record(tmp_path, sp_model):
    bad = _bad_jsonl(tmp_path / "bad.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    empty_gz = tmp_path / "empty.jsonl.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    out = run_prepare(make_cfg([bad, empty, empty_gz], tmp_path / "out", sp_model))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["counts"] == {
        "malformed_json": 2,
        "missing_text": 2,
        "non_string_text": 1,
        "invalid_utf8": 2,
        "empty": 3,
        "empty_file": 2,
    }
    examples = manifest["skipped"]["examples"]
    assert examples["malformed_json"] == [f"{bad}:2", f"{bad}:9"]
    assert examples["missing_text"] == [f"{bad}:3", f"{bad}:10"]
    assert examples["non_string_text"] == [f"{bad}:4"]
    assert examples["invalid_utf8"] == [f"{bad}:5", f"{bad}:11"]
    assert examples["empty"] == [f"{bad}:6", f"{bad}:7", f"{bad}:8"]
    assert examples["empty_file"] == [str(empty), str(empty_gz)]
    assert manifest["totals"]["num_docs"] == 3
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert [sp.decode(d[:-1]) for d in read_docs(out)] == ["good one", "good two", "good three"]


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_fail_names_file_and_line(tmp_path, sp_model, reason):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD[0] + BAD_LINES[reason] + GOOD[1])
    cfg = make_cfg([path], tmp_path / "out", sp_model, input__on_error="fail")
    with pytest.raises(DataError, match=rf"{path}:2: .*\({reason}\)"):
        run_prepare(cfg)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_fail_on_empty_file(tmp_path, sp_model, corpus_jsonl):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    cfg = make_cfg([corpus_jsonl, empty], tmp_path / "out", sp_model, input__on_error="fail")
    with pytest.raises(DataError, match=rf"{empty}: the input file holds no record"):
        run_prepare(cfg)


def test_cli_fail_exits_nonzero_naming_file_line(tmp_path, sp_model):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD[0] + GOOD[1] + BAD_LINES["non_string_text"])
    proc = run_cli(
        "data_pipeline",
        "input=files",
        f"input.paths=[{path}]",
        f"tokenizer.model={sp_model}",
        f"output.dir={tmp_path / 'out'}",
        "input.on_error=fail",
        "progress=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"{path}:3: the text field (input.text_key) is not a string" in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()


def test_missing_inputs_and_tokenizer_paths(tmp_path, sp_model, corpus_jsonl):
    with pytest.raises(ConfigError, match=r"input.paths: .*missing.jsonl' does not exist"):
        run_prepare(make_cfg([tmp_path / "missing.jsonl"], tmp_path / "o", sp_model))
    with pytest.raises(ConfigError, match=r"input.paths: the glob .* matches no file"):
        run_prepare(make_cfg([tmp_path / "*.zst"], tmp_path / "o", sp_model))
    with pytest.raises(ConfigError, match=r"tokenizer.model='.*nope.model': no such file"):
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "o", tmp_path / "nope.model"))
    not_a_model = tmp_path / "fake.model"
    not_a_model.write_bytes(b"not a protobuf")
    with pytest.raises(ConfigError, match=r"tokenizer.model=.* is not a SentencePiece model"):
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "o", not_a_model))
    with pytest.raises(ConfigError, match=r"input.on_error='maybe'"):
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "o", sp_model, input__on_error="maybe"))


def test_output_dir_of_another_tokenizer(tmp_path, sp_model, corpus_jsonl, texts):
    out = tmp_path / "out"
    run_prepare(make_cfg([corpus_jsonl], out, sp_model))
    other = tmp_path / "other.model"
    other.write_bytes(train_model(TokenizerConfig(vocab_size=400), texts[3:20]))
    with pytest.raises(OutputError, match=r"holds data made with another tokenizer"):
        run_prepare(make_cfg([corpus_jsonl], out, other))
    assert (out / "manifest.json").exists()  # the refused run touched nothing
    run_prepare(make_cfg([corpus_jsonl], out, other, output__overwrite=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["vocab_size"] == 400


def test_truncated_gz_keeps_good_records(tmp_path, sp_model, texts):
    import zstandard

    lines = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in texts[:10])
    cut_gz = tmp_path / "cut.jsonl.gz"
    cut_gz.write_bytes(gzip.compress(lines)[:-4000])
    cut_zst = tmp_path / "cut.jsonl.zst"
    cut_zst.write_bytes(zstandard.ZstdCompressor().compress(lines)[:-4000])
    out = run_prepare(make_cfg([cut_gz, cut_zst], tmp_path / "out", sp_model))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"]["counts"] == {"unreadable_file": 2}
    first_bad = [
        int(e.rsplit(":", 1)[1]) for e in manifest["skipped"]["examples"]["unreadable_file"]
    ]
    assert manifest["totals"]["num_docs"] == sum(n - 1 for n in first_bad) > 0
    cfg = make_cfg([cut_gz], tmp_path / "out2", sp_model, input__on_error="fail")
    with pytest.raises(DataError, match=rf"{cut_gz}:{first_bad[0]}: the file cannot be read"):
        run_prepare(cfg)
