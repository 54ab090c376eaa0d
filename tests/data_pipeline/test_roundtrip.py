"""Round trip through megatron's IndexedDataset reader; manifest contract; worker-count identity."""

from __future__ import annotations

import hashlib
import json

import sentencepiece as spm
from dp_helpers import make_cfg, read_docs, shard_bytes

from data_pipeline.prepare import run_prepare


def test_round_trip_matches_sentencepiece(tmp_path, corpus_jsonl, sp_model, texts):
    out = run_prepare(make_cfg([corpus_jsonl], tmp_path / "out", sp_model, output__num_shards=3))
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    expected = [ids + [sp.eos_id()] for ids in sp.encode(texts)]
    assert read_docs(out) == expected
    assert sp.decode(read_docs(out)[4][:-1]) == texts[4]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    tok = manifest["tokenizer"]
    assert tok["path"] == "tokenizer.model"
    assert tok["sha256"] == hashlib.sha256(sp_model.read_bytes()).hexdigest()
    assert (tok["vocab_size"], tok["eod_id"], tok["bos_id"], tok["pad_id"], tok["unk_id"]) == (
        512,
        2,
        1,
        3,
        0,
    )
    assert tok["type"] == "bpe" and manifest["dtype"] == "uint16"
    assert len(manifest["shards"]) == 3
    for shard in manifest["shards"]:
        for suffix in ("bin", "idx"):
            digest = hashlib.sha256((out / f"{shard['prefix']}.{suffix}").read_bytes()).hexdigest()
            assert shard[f"{suffix}_sha256"] == digest
        bin_tokens = (out / f"{shard['prefix']}.bin").stat().st_size // 2
        assert shard["num_tokens"] == bin_tokens
    assert manifest["totals"]["num_docs"] == len(texts)
    assert manifest["totals"]["num_tokens"] == sum(len(d) for d in expected)
    assert manifest["totals"]["num_bytes"] == sum(len(t.encode()) for t in texts)
    assert manifest["inputs"] == [{"path": str(corpus_jsonl), "size": corpus_jsonl.stat().st_size}]
    assert manifest["skipped"] == {"counts": {}, "examples": {}}
    assert manifest["config"]["output"]["num_shards"] == 3
    assert manifest["timings"]["total_s"] > 0
    assert manifest["encoder"]["name"] == "kitoken"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_identical_bytes_across_workers_and_encoders(tmp_path, corpus_jsonl, sp_model):
    runs = {}
    for name, kw in {
        "w1": {"workers": 1},
        "w2": {"workers": 2},
        "w4": {"workers": 4},
        "w2_sp": {"workers": 2, "tokenizer__encoder": "sentencepiece"},
    }.items():
        cfg = make_cfg(
            [corpus_jsonl], tmp_path / name, sp_model, output__num_shards=2, batch_bytes=8192, **kw
        )
        runs[name] = shard_bytes(run_prepare(cfg))
    assert len(runs["w1"]) == 4
    for name in ("w2", "w4", "w2_sp"):
        assert runs[name] == runs["w1"], name
    manifest = json.loads((tmp_path / "w2_sp" / "manifest.json").read_text())
    assert manifest["encoder"]["name"] == "sentencepiece"


def test_kitoken_mismatch_rebuilds_shard_with_sentencepiece(
    tmp_path, corpus_jsonl, sp_model, monkeypatch
):
    reference = shard_bytes(
        run_prepare(make_cfg([corpus_jsonl], tmp_path / "ref", sp_model, output__num_shards=2))
    )
    from data_pipeline.tokenizer import Encoder

    real_encode = Encoder.encode

    def wrong_kitoken(self, texts, name=None):
        ids = real_encode(self, texts, name)
        if (name or self.name) == "kitoken" and ids:
            ids[0] = ids[0][:-1]  # a silent disagreement on the first document of the batch
        return ids

    monkeypatch.setattr(Encoder, "encode", wrong_kitoken)
    out = run_prepare(make_cfg([corpus_jsonl], tmp_path / "out", sp_model, output__num_shards=2))
    assert shard_bytes(out) == reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder"]["per_shard"] == {
        "shard_00000": "sentencepiece",
        "shard_00001": "sentencepiece",
    }
