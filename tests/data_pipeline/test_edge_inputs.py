"""Inputs users throw at the job (BOM, CRLF, odd suffixes, dotted keys, wrong files) and the
output-dir edge cases: each gives the right documents or a clear error naming key and file."""

from __future__ import annotations

import gc
import gzip
import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
from dp_helpers import make_cfg, read_docs, run_cli, shard_bytes, write_jsonl

from data_pipeline import shard
from data_pipeline.errors import ConfigError, OutputError
from data_pipeline.fields import MISSING
from data_pipeline.prepare import run_prepare

BOM = b"\xef\xbb\xbf"


def _decoded(out, sp_model) -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    docs = read_docs(out)
    assert all(d[-1] == sp.eos_id() for d in docs)
    return [sp.decode(d[:-1]) for d in docs]


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_bom_crlf_last_line_and_uppercase_suffixes(tmp_path, sp_model):
    (tmp_path / "a_bom.jsonl").write_bytes(BOM + b'{"text": "bom first"}\n{"text": "bom 2"}\n')
    (tmp_path / "b_crlf.jsonl").write_bytes(b'{"text": "crlf one"}\r\n{"text": "crlf two"}\r\n')
    (tmp_path / "c_nonl.jsonl").write_bytes(b'{"text": "line"}\n{"text": "no newline at end"}')
    (tmp_path / "d_bom.txt").write_bytes(BOM + b"text file with a BOM")
    (tmp_path / "e_lines.txt").write_bytes(BOM + b"line one\r\nline two")
    (tmp_path / "F.JSONL").write_bytes(b'{"text": "upper case suffix"}\n')
    (tmp_path / "G.Jsonl.GZ").write_bytes(gzip.compress(BOM + b'{"text": "upper gz"}\n'))
    names = ["a_bom.jsonl", "b_crlf.jsonl", "c_nonl.jsonl", "d_bom.txt", "F.JSONL", "G.Jsonl.GZ"]
    for shards in (1, 5):  # 5: line-split pieces start mid-file (BOM only at byte 0)
        out = run_prepare(
            make_cfg([tmp_path / n for n in names], tmp_path / f"out{shards}", sp_model,
                     output__num_shards=shards)
        )  # fmt: skip
        assert _decoded(out, sp_model) == [
            "bom first", "bom 2", "crlf one", "crlf two", "line", "no newline at end",
            "text file with a BOM", "upper case suffix", "upper gz",
        ]  # fmt: skip
        assert _manifest(out)["skipped"]["counts"] == {}
    out = run_prepare(
        make_cfg([tmp_path / "e_lines.txt"], tmp_path / "lines", sp_model, input__text_unit="line")
    )
    assert _decoded(out, sp_model) == ["line one", "line two"]


def test_dotted_text_key_jsonl_parquet_and_hf(tmp_path, sp_model):
    import datasets

    (tmp_path / "a.jsonl").write_text(
        '{"meta": {"text": "nested"}}\n{"meta.text": "literal key wins", "meta": {"text": "no"}}\n'
        '{"meta": {"other": 1}}\n{"meta": "not a dict"}\n{"meta": {"text": 7}}\n'
    )
    pq.write_table(
        pa.table({"meta": [{"text": "struct a"}, {"text": None}]}), tmp_path / "b.parquet"
    )
    ds = datasets.Dataset.from_dict({"meta": [{"text": "hf struct"}]})
    ds.save_to_disk(str(tmp_path / "hf"))
    paths = [tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "hf"]
    out = run_prepare(
        make_cfg(paths, tmp_path / "out", sp_model, input__text_key="meta.text", workers=2)
    )
    assert _decoded(out, sp_model) == ["nested", "literal key wins", "struct a", "hf struct"]
    manifest = _manifest(out)
    assert manifest["skipped"]["counts"] == {"missing_text": 3, "non_string_text": 1}
    assert manifest["skipped"]["examples"]["non_string_text"] == [f"{tmp_path}/a.jsonl:5"]
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING  # crosses to the workers intact


def test_json_array_file_is_a_clear_error(tmp_path, sp_model):
    array = tmp_path / "data.json"
    array.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=1))
    with pytest.raises(ConfigError, match=r"data\.json holds a JSON array, not JSON Lines.*jq"):
        run_prepare(make_cfg([array], tmp_path / "out", sp_model))
    array.write_bytes(gzip.compress(BOM + b' [{"text": "a"}]'))
    array = array.rename(tmp_path / "data.json.gz")
    with pytest.raises(ConfigError, match=r"data\.json\.gz holds a JSON array"):
        run_prepare(make_cfg([array], tmp_path / "out", sp_model))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl.XZ").write_bytes(b"\xfd7zXZ\x00")
    with pytest.raises(ConfigError, match=r"a\.jsonl\.XZ is a \.xz .*input.exclude=\['\*\.XZ'\]"):
        run_prepare(make_cfg([tmp_path / "d"], tmp_path / "out", sp_model))
    (tmp_path / "d" / "a.jsonl.XZ").rename(tmp_path / "d" / "a.tar.gz")
    with pytest.raises(ConfigError, match=r"a\.tar\.gz is a \.tar .*input.exclude=\['\*\.gz'\]"):
        run_prepare(make_cfg([tmp_path / "d"], tmp_path / "out", sp_model))
    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps({"text": "a"}, indent=1))
    with pytest.raises(ConfigError, match=r"one\.json holds a pretty-printed JSON object"):
        run_prepare(make_cfg([pretty], tmp_path / "out", sp_model))


def test_duplicate_paths_and_links_are_read_once(tmp_path, sp_model, caplog):
    data = write_jsonl(tmp_path / "a b ü [1].jsonl", ["only once"])  # not a glob: it exists
    (tmp_path / "link.jsonl").symlink_to(data)
    paths = [data, tmp_path / "link.jsonl", str(tmp_path / "*.jsonl")]
    out = run_prepare(make_cfg(paths, tmp_path / "out", sp_model))
    assert _decoded(out, sp_model) == ["only once"]
    assert [i["path"] for i in _manifest(out)["inputs"]] == [str(data)]
    assert "link.jsonl is listed twice (or via a link); read once" in caplog.text


def test_parquet_and_hf_column_errors_name_column_and_file(tmp_path, sp_model):
    import datasets

    table = pa.table({"body": ["a", None, "c", "d", "e"], "n": [1, 2, 3, 4, 5]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)  # 3 row groups
    parquet = tmp_path / "t.parquet"
    with pytest.raises(ConfigError, match=r"input.text_key='text': .*t\.parquet has no column "):
        run_prepare(make_cfg([parquet], tmp_path / "o1", sp_model))
    with pytest.raises(ConfigError, match=r"'n'.*t\.parquet has type int64, not text"):
        run_prepare(make_cfg([parquet], tmp_path / "o2", sp_model, input__text_key="n"))
    datasets.Dataset(table).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match=r"hf \(split train\) has no column 'text'.*'body'"):
        run_prepare(make_cfg([tmp_path / "hf"], tmp_path / "o3", sp_model))
    typo = make_cfg([tmp_path / "hff"], tmp_path / "o3", sp_model, input__format="hf")
    with pytest.raises(ConfigError, match=r"hff' does not exist"):  # a path, not a hub name
        run_prepare(typo)
    out = run_prepare(
        make_cfg([parquet], tmp_path / "o4", sp_model, input__text_key="body",
                 output__num_shards=3, workers=2)
    )  # fmt: skip
    assert _decoded(out, sp_model) == ["a", "c", "d", "e"]
    assert _manifest(out)["skipped"]["examples"] == {"missing_text": [f"{parquet}:2"]}


def test_tokenizer_training_errors_name_the_key(tmp_path):
    small = write_jsonl(tmp_path / "small.jsonl", ["hello world", "more text"])
    cfg = make_cfg([small], tmp_path / "out", tokenizer__vocab_size=5000)
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size=5000 is too large .* at most \d+"):
        run_prepare(cfg)
    cfg = make_cfg([small], tmp_path / "out", tokenizer__character_coverage=0.5)
    with pytest.raises(ConfigError, match=r"tokenizer.character_coverage=0.5: .* 0.98 <= "):
        run_prepare(cfg)
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    cfg = make_cfg([tmp_path / "bad.jsonl"], tmp_path / "out2")
    with pytest.raises(ConfigError, match="no usable document.*input.text_key"):
        run_prepare(cfg)


def test_vocab_over_65535_writes_int32(tmp_path, sp_model):
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sp_model.read_bytes())
    for i in range(66000):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"<extra_{i}>", 0.0
        piece.type = pb.ModelProto.SentencePiece.USER_DEFINED
    big = tmp_path / "big.model"
    big.write_bytes(proto.SerializeToString())
    texts = ["hello <extra_65999> world", "second"]
    out = run_prepare(make_cfg([write_jsonl(tmp_path / "a.jsonl", texts)], tmp_path / "o", big))
    manifest = _manifest(out)
    assert manifest["dtype"] == "int32" and manifest["tokenizer"]["vocab_size"] == 66512
    sp = spm.SentencePieceProcessor(model_file=str(big))
    assert read_docs(out) == [ids + [sp.eos_id()] for ids in sp.encode(texts)]
    assert max(read_docs(out)[0]) == 66511


def test_output_dir_that_is_a_file(tmp_path, sp_model, corpus_jsonl):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"output.dir='.*file' is a file, not a directory"):
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "file", sp_model))
    with pytest.raises(OutputError, match=r"output.dir='.*file/sub' cannot be used"):
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "file" / "sub", sp_model))


def test_rerun_with_other_inputs_leaves_no_stale_shard(tmp_path, sp_model, corpus_jsonl):
    out = tmp_path / "out"
    run_prepare(make_cfg([corpus_jsonl], out, sp_model, output__num_shards=4))
    small = write_jsonl(tmp_path / "small.jsonl", ["one", "two"])
    run_prepare(make_cfg([small], out, sp_model, output__num_shards=4))
    prefixes = [s["prefix"] for s in _manifest(out)["shards"]]
    on_disk = sorted(p.name for p in out.glob("shard_*.[bi][id][nx]"))
    assert on_disk == sorted(f"{p}.{s}" for p in prefixes for s in ("bin", "idx"))
    assert _decoded(out, sp_model) == ["one", "two"]
    # overwrite=true with tokenizer.model=OUTPUT_DIR/tokenizer.model keeps that model
    run_prepare(make_cfg([small], out, out / "tokenizer.model", output__overwrite=True))
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    assert _decoded(out, sp_model) == ["one", "two"]


def test_interrupt_leaves_no_complete_looking_file_and_rerun_matches(
    tmp_path, sp_model, corpus_jsonl, monkeypatch
):
    reference = run_prepare(make_cfg([corpus_jsonl], tmp_path / "ref", sp_model,
                                     output__num_shards=3, batch_bytes=4096))  # fmt: skip
    real, calls, out = shard.encode_task, [], tmp_path / "out"

    def interrupted(task):
        calls.append((out / "shard_00001.done.json").exists())
        if sum(calls) == 2:  # Ctrl-C at the second batch of shard 2 (shard 1 done)
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(shard, "encode_task", interrupted)
    cfg = make_cfg([corpus_jsonl], out, sp_model, output__num_shards=3, batch_bytes=4096)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(cfg)
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names and not [n for n in names if ".tmp-" in n]
    assert [n for n in names if n.startswith("shard_")] == [
        "shard_00000.bin", "shard_00000.done.json", "shard_00000.idx",
        "shard_00001.bin", "shard_00001.done.json", "shard_00001.idx",
    ]  # fmt: skip
    monkeypatch.setattr(shard, "encode_task", real)
    run_prepare(cfg)
    assert shard_bytes(out) == shard_bytes(reference)


def test_cli_help_and_unknown_key(tmp_path):
    result = run_cli("data_pipeline", "--help")
    assert result.returncode == 0
    assert "input: stdlib_code (default), files, hf" in result.stdout
    assert "parallel:" not in result.stdout  # only this job's groups, not pretrain's
    assert "output:\n  dir: ''" in result.stdout
    result = run_cli("data_pipeline", "input=files", "input.textkey=x")
    assert result.returncode == 2  # like every configuration error (Hydra's own exits 1)
    assert "textkey" in result.stderr  # the key is named (Hydra's message, or the strict check's)


def test_folder_skips_hidden_files_and_its_own_output(tmp_path, sp_model, caplog):
    for data, out in ((tmp_path / "a", tmp_path / "a" / "out"), (tmp_path / "b", tmp_path / "b")):
        data.mkdir()
        write_jsonl(data / "a.jsonl", ["doc one", "doc two"])
        (data / ".git").mkdir()
        (data / ".git" / "config").write_text("[core]\n")
        (data / ".DS_Store").write_bytes(b"\x00\x01")
        for _ in range(2):  # the rerun must not read the first run's output as input
            manifest = _manifest(run_prepare(make_cfg([data], out, sp_model)))
            assert [i["path"] for i in manifest["inputs"]] == [str(data / "a.jsonl")]
            assert manifest["totals"]["num_docs"] == 2 and manifest["skipped"]["counts"] == {}
    assert "files written by this job in" in caplog.text


# megatron's IndexedDataset.__del__ fails on the half-built object of a damaged .idx
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_inspect_no_verify_on_damaged_idx_and_merge_out_file(
    tmp_path, sp_model, corpus_jsonl, caplog
):
    from data_pipeline import inspect, merge

    out = run_prepare(make_cfg([corpus_jsonl], tmp_path / "out", sp_model, output__num_shards=2))
    with open(out / "shard_00001.idx", "r+b") as f:
        f.truncate(40)  # header intact, sizes gone
    assert inspect.main([str(out), "--no-verify", "--samples", "0"]) == 1
    gc.collect()  # run that __del__ here, under this test's warning filter
    assert "shard_00001: cannot be read (" in caplog.text
    assert inspect.main([str(out), "--samples", "0"]) == 1
    assert "shard_00001.idx: sha256 differs from the manifest" in caplog.text
    (tmp_path / "file").write_text("x")
    good = run_prepare(make_cfg([corpus_jsonl], tmp_path / "good", sp_model))
    with pytest.raises(OutputError, match="--out .*file is a file, not a directory"):
        merge.merge([good], tmp_path / "file")
    with pytest.raises(OutputError, match="--out .*file/m cannot be created"):
        merge.merge([good], tmp_path / "file" / "m")


def test_unigram_end_to_end(tmp_path, texts):
    data = write_jsonl(tmp_path / "a.jsonl", texts[:8])
    cfg = make_cfg([data], tmp_path / "out", tokenizer__type="unigram", tokenizer__vocab_size=400)
    out = run_prepare(cfg)
    manifest = _manifest(out)
    assert manifest["tokenizer"]["type"] == "unigram" and manifest["encoder"]["name"] == (
        "sentencepiece"
    )
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.vocab_size() == 400
    assert read_docs(out) == [ids + [sp.eos_id()] for ids in sp.encode(texts[:8])]


def test_write_atomic_leaves_no_temporary_file(tmp_path, monkeypatch):
    from data_pipeline import tokenizer

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenizer.write_atomic(tmp_path / "manifest.json", b"{}")
    assert list(tmp_path.iterdir()) == []
