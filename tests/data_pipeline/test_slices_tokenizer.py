"""Slurm-array slices + finalize equal a single run; tokenizer training is deterministic."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from dp_helpers import make_cfg, shard_bytes
from sentencepiece import sentencepiece_model_pb2 as pb

from data_pipeline.config import SliceConfig, TokenizerConfig
from data_pipeline.errors import ConfigError, OutputError
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import choose_encoder, train_model

TRAIN = {"tokenizer__vocab_size": 512, "tokenizer__sample_bytes": 200_000}


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_slices_then_finalize_equal_single_run(tmp_path, corpus_jsonl, monkeypatch):
    single = run_prepare(
        make_cfg([corpus_jsonl], tmp_path / "single", output__num_shards=5, **TRAIN)
    )

    out = tmp_path / "sliced"
    run_prepare(make_cfg([corpus_jsonl], out, stage="tokenizer", **TRAIN))
    trained_at = (out / "tokenizer.model").stat().st_mtime_ns
    cfg = make_cfg([corpus_jsonl], out, output__num_shards=5, **TRAIN)
    cfg.slice = SliceConfig(index=0, count=2)
    run_prepare(cfg)
    assert sorted(p.name for p in out.glob("*.done.json")) == [
        "shard_00000.done.json",
        "shard_00001.done.json",
    ]
    assert not (out / "manifest.json").exists()
    cfg.stage = "finalize"
    with pytest.raises(OutputError, match=r"3 shards are missing .*shard_00002"):
        run_prepare(cfg)

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    cfg = make_cfg([corpus_jsonl], out, output__num_shards=5, **TRAIN)
    run_prepare(cfg)  # slice 1 of 2, from the Slurm environment
    assert len(list(out.glob("*.done.json"))) == 5 and not (out / "manifest.json").exists()
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    cfg.stage = "finalize"
    run_prepare(cfg)

    assert (out / "tokenizer.model").stat().st_mtime_ns == trained_at  # trained once, reused
    assert (out / "tokenizer.model").read_bytes() == (single / "tokenizer.model").read_bytes()
    assert shard_bytes(out) == shard_bytes(single)
    assert _manifest(out)["shards"] == _manifest(single)["shards"]
    assert _manifest(out)["totals"] == _manifest(single)["totals"]


def test_slice_index_out_of_range(tmp_path, corpus_jsonl, sp_model):
    cfg = make_cfg([corpus_jsonl], tmp_path / "o", sp_model)
    cfg.slice = SliceConfig(index=2, count=2)
    with pytest.raises(ConfigError, match=r"slice.index=2: must be in \[0, slice.count=2\)"):
        run_prepare(cfg)
    cfg.slice, cfg.output.overwrite = SliceConfig(index=1, count=2), True
    with pytest.raises(ConfigError, match=r"overwrite=true with slice.count=2: every array task"):
        run_prepare(cfg)


def test_tokenizer_training_is_deterministic_and_llama_style(tmp_path, corpus_jsonl, texts):
    paths = []
    for name in ("a", "b"):
        out = run_prepare(make_cfg([corpus_jsonl], tmp_path / name, stage="tokenizer", **TRAIN))
        paths.append(out / "tokenizer.model")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    other_seed = run_prepare(
        make_cfg([corpus_jsonl], tmp_path / "c", stage="tokenizer", tokenizer__seed=7, **TRAIN)
    )
    assert (other_seed / "tokenizer.model").read_bytes() != paths[0].read_bytes()

    proto = pb.ModelProto()
    proto.ParseFromString(paths[0].read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert (spec.byte_fallback, spec.split_digits, spec.allow_whitespace_only_pieces) == (
        True,
        True,
        True,
    )
    assert (norm.name, norm.remove_extra_whitespaces) == ("identity", False)
    assert (spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (0, 1, 2, 3)
    assert spec.vocab_size == 512 and spec.model_type == pb.TrainerSpec.BPE
    sp = spm.SentencePieceProcessor(model_file=str(paths[0]))
    assert all(sp.decode(ids) == t for ids, t in zip(sp.encode(texts), texts, strict=True))
    pieces = sp.encode_as_pieces("x = 1234567890 + 2026")
    assert all(not (len(p.strip("\u2581")) > 1 and p.strip("\u2581").isdigit()) for p in pieces)
    assert sp.encode("    return  x\n\tpass") != sp.encode(" return x\n pass")  # no collapsing


def test_unigram_falls_back_to_sentencepiece(tmp_path, texts):
    model = tmp_path / "uni.model"
    model.write_bytes(train_model(TokenizerConfig(vocab_size=400, type="unigram"), texts[3:15]))
    assert choose_encoder("auto", model) == (
        "sentencepiece",
        "kitoken not used: model_type is not BPE",
    )
    with pytest.raises(ConfigError, match=r"tokenizer.encoder=kitoken: .*model_type is not BPE"):
        choose_encoder("kitoken", model)
