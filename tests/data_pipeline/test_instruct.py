"""Instruction data (input.format=chat|prompt_completion): exact loss masks, templates, special
tokens, truncation, bad input and the on-disk contract (loss-mask shards, manifest `instruct`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from dp_helpers import make_cfg

from data_pipeline.errors import ConfigError, DataError, OutputError
from data_pipeline.instruct.examples import encode_spans
from data_pipeline.instruct.templates import BUILTINS
from data_pipeline.manifest import verify_dir
from data_pipeline.megatron_io import indexed_dataset
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import load_processor, sha256_file

WORDS = ["alpha", "beta", "gamma", "delta", "return", "value", "list", "index", "token", "model"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _chat_rows(count: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        turns = [{"role": "system", "content": "Be brief."}] if i % 2 else []
        turns += [
            {"role": "user", "content": _sentence(rng, 8)},
            {"role": "assistant", "content": _sentence(rng, 6)},
        ]
        if i % 3 == 0:  # a second exchange: every assistant turn is a target
            turns += [
                {"role": "user", "content": _sentence(rng, 4)},
                {"role": "assistant", "content": _sentence(rng, 5)},
            ]
        rows.append({"messages": turns})
    return rows


def _write(path: Path, rows: list, raw: list[bytes] = ()) -> Path:
    lines = [json.dumps(r).encode() + b"\n" for r in rows] + list(raw)
    path.write_bytes(b"".join(lines))
    return path


def _cfg(paths, out, model=None, fmt="chat", **kw):
    cfg = make_cfg(paths, out, model, input__format=fmt, **kw)
    cfg.tokenizer.vocab_size = 320  # the small word list makes ~400 pieces at most
    return cfg


def _docs(out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, mask) of every example, via megatron's IndexedDataset on both datasets."""
    dataset_cls = indexed_dataset().IndexedDataset
    manifest = json.loads((out / "manifest.json").read_text())
    docs = []
    for shard in manifest["shards"]:
        tokens = dataset_cls(str(out / shard["prefix"]))
        masks = dataset_cls(str(out / shard["loss_mask"]["prefix"]))
        assert len(tokens) == len(masks) == shard["num_docs"]
        assert np.array_equal(tokens.sequence_lengths, masks.sequence_lengths)
        docs += [(np.array(tokens[i]), np.array(masks[i])) for i in range(len(tokens))]
    return docs


def _text(sp, ids) -> str:
    """The exact text of tokens: decoded after a leading "a" (SentencePiece drops the leading
    space of the first piece only), so byte-fallback pieces become their characters."""
    a = sp.piece_to_id("a")
    return sp.decode([a, *(int(i) for i in ids)])[1:]


def _target_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@pytest.mark.parametrize("template", ["default", "llama3"])
def test_chat_mask_is_exactly_the_assistant_turns(tmp_path, template):
    rows = _chat_rows()
    src = _write(tmp_path / "chat.jsonl", rows)
    cfg = _cfg([src], tmp_path / "out", input__template=template)
    out = run_prepare(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    sp = load_processor(out / "tokenizer.model")
    text, specials = BUILTINS[template]
    end = "<|end|>" if template == "default" else "<|eot_id|>"
    for token in specials:  # reserved as user_defined_symbols: one piece each
        assert sp.piece_to_id(token) != sp.unk_id() and sp.is_unused(sp.piece_to_id(token)) is False
    eod = manifest["tokenizer"]["eod_id"]
    docs = _docs(out)
    assert len(docs) == len(rows)
    for (ids, mask), row in zip(docs, rows, strict=True):
        assert ids[-1] == eod and mask[-1] == 1  # the final EOD is a target
        runs = _target_runs(mask[:-1])
        answers = [t["content"] + end for t in row["messages"] if t["role"] == "assistant"]
        assert [_text(sp, ids[a:b]) for a, b in runs] == answers
        prompt = _text(sp, ids[mask == 0])
        assert all(t["content"] in prompt for t in row["messages"] if t["role"] != "assistant")
    block = manifest["instruct"]
    assert block["format"] == "chat" and block["template"]["name"] == template
    assert block["template"]["text"] == text
    assert block["template"]["sha256"] == __import__("hashlib").sha256(text.encode()).hexdigest()
    assert block["special_tokens"] == list(specials)
    assert (block["max_tokens"], block["overlong"], block["truncated"], block["dropped"]) == (
        2048,
        "truncate",
        0,
        0,
    )
    assert block["num_target_tokens"] == sum(int(m.sum()) for _, m in docs)
    shard = manifest["shards"][0]
    assert shard["num_target_tokens"] == block["num_target_tokens"]
    mask_prefix = out / shard["loss_mask"]["prefix"]
    assert shard["loss_mask"]["prefix"] == "shard_00000.loss_mask"
    assert shard["loss_mask"]["bin_sha256"] == sha256_file(f"{mask_prefix}.bin")
    assert indexed_dataset().IndexedDataset(str(mask_prefix)).index.dtype == np.uint8
    assert verify_dir(out, manifest) == []


def test_prompt_completion_plain_with_custom_keys(tmp_path, sp_model):
    rows = [
        {"q": "def add(a, b):\n", "a": "    return a + b\n"},
        {"q": "Name three colours:", "a": " red, green and blue."},
        {"q": "x = [1, 2, 3]\n# the sum of x is", "a": " 6\n"},
    ]
    src = _write(tmp_path / "pc.jsonl", rows)
    cfg = _cfg([src], tmp_path / "out", sp_model, "prompt_completion")
    cfg.input.prompt_key, cfg.input.completion_key = "q", "a"
    out = run_prepare(cfg)
    sp = load_processor(out / "tokenizer.model")
    docs = _docs(out)
    for (ids, mask), row in zip(docs, rows, strict=True):
        # the whole string is encoded once: prompt tokens + completion tokens + EOD
        assert ids[:-1].tolist() == sp.encode(row["q"] + row["a"])
        assert _text(sp, ids[:-1][mask[:-1] == 1]) == row["a"]
        assert _text(sp, ids[mask == 0]).removeprefix(" ") == row["q"]  # dummy prefix
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["instruct"]["template"]["name"] == "plain"
    assert manifest["instruct"]["special_tokens"] == []


def test_target_is_decided_by_a_tokens_first_byte(sp_model):
    """Multi-byte text around the boundary: piece begin offsets are UTF-8 byte offsets."""
    sp = load_processor(sp_model)
    spans = [("héllo wörld ", False), ("€uro – naïve", True), (" tail", False)]
    ids, mask = encode_spans(sp, spans, eod=2)
    text = "".join(t for t, _ in spans)
    pieces = sp.encode(text, out_type="proto").pieces
    lo = len("héllo wörld ".encode())
    hi = lo + len("€uro – naïve".encode())
    expected = [int(lo <= p.begin < hi) for p in pieces] + [1]
    assert mask.tolist() == expected
    assert ids == [p.id for p in pieces] + [2]
    assert 0 < sum(expected[:-1]) < len(pieces)


def test_overlong_truncate_and_drop(tmp_path, sp_model):
    sp = load_processor(sp_model)
    short = {"prompt": "a b c", "completion": " d e"}
    long_completion = {"prompt": "short prompt", "completion": " word" * 80}
    long_prompt = {"prompt": "word " * 80, "completion": " end"}
    src = _write(tmp_path / "pc.jsonl", [short, long_completion, long_prompt])
    limit = 24
    assert len(sp.encode(short["prompt"] + short["completion"])) + 1 <= limit
    cfg = _cfg([src], tmp_path / "t", sp_model, "prompt_completion", input__max_tokens=limit)
    out = run_prepare(cfg)
    block = json.loads((out / "manifest.json").read_text())["instruct"]
    assert (block["truncated"], block["dropped"]) == (1, 1)  # the long prompt leaves no target
    docs = _docs(out)
    assert [len(ids) for ids, _ in docs] == [len(sp.encode("a b c d e")) + 1, limit]
    ids, mask = docs[1]
    assert (
        ids.tolist() == sp.encode(long_completion["prompt"] + long_completion["completion"])[:limit]
    )
    assert mask[-1] == 1 and ids[-1] != 2  # cut: no EOD at the end
    cfg = _cfg([src], tmp_path / "d", sp_model, "prompt_completion", input__max_tokens=limit)
    cfg.input.overlong = "drop"
    block = json.loads((run_prepare(cfg) / "manifest.json").read_text())["instruct"]
    assert (block["truncated"], block["dropped"]) == (0, 2)


BAD = [
    b'{"conversation": []}\n',  # 2 missing_messages
    b'{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n',
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}\n',
    b'{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}\n',
    b'{"messages": [{"role": "user", "content": "only a question"}]}\n',  # 6 no_assistant
    b'{"messages": "not a list"}\n',  # 7 malformed_messages
    b'{"messages": [{"role": "user", "content": "a\\ue000b"}, {"role": "assistant", '
    b'"content": "x"}]}\n',  # 8 reserved_char (U+E000, a target marker)
    b"not json\n",  # 9 malformed_json
]
BAD_REASONS = [
    "missing_messages",
    "unknown_role",
    "empty_assistant",
    "non_string_content",
    "no_assistant",
    "malformed_messages",
    "reserved_char",
    "malformed_json",
]


def test_bad_chat_lines_are_counted_with_file_line(tmp_path, sp_model):
    rows = _chat_rows(1)
    src = _write(
        tmp_path / "bad.jsonl", rows, BAD + [json.dumps(_chat_rows(1)[0]).encode() + b"\n"]
    )
    cfg = _cfg([src], tmp_path / "out", sp_model, input__template="plain")
    manifest = json.loads((run_prepare(cfg) / "manifest.json").read_text())
    assert manifest["skipped"]["counts"] == {reason: 1 for reason in BAD_REASONS}
    for line, reason in enumerate(BAD_REASONS, 2):
        assert manifest["skipped"]["examples"][reason] == [f"{src}:{line}"]
    assert manifest["totals"]["num_docs"] == 2


@pytest.mark.parametrize(("line", "reason"), list(enumerate(BAD_REASONS, 2))[:4])
def test_bad_chat_line_fails_naming_file_line(tmp_path, sp_model, line, reason):
    src = _write(tmp_path / "bad.jsonl", _chat_rows(1), [BAD[line - 2]])
    out = tmp_path / "out"
    cfg = _cfg([src], out, sp_model, input__template="plain", input__on_error="fail")
    with pytest.raises(DataError, match=rf"{src}:2: .*\({reason}\)"):  # after one good line
        run_prepare(cfg)
    assert not list(out.glob("shard_*")) and not (out / "manifest.json").exists()
    assert not list(out.glob(".shard_*"))


def _template_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tpl.jinja"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "{% for m in messages %}\n{{ m.content }\n{% endfor %}",
            r"tpl\.jinja: line 2: Jinja syntax",
        ),
        ("{{ target_start }}{{ nope }}{{ target_end }}", r"does not render.*'nope' is undefined"),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", "renders no target"),
        ("{{ target_start }}{% for m in messages %}{{ m.content }}{% endfor %}", "never closed"),
    ],
)
def test_template_errors_before_anything_is_written(tmp_path, sp_model, text, match):
    src = _write(tmp_path / "chat.jsonl", _chat_rows(2))
    out = tmp_path / "out"
    cfg = _cfg([src], out, sp_model, input__template=str(_template_file(tmp_path, text)))
    with pytest.raises(ConfigError, match=match):
        run_prepare(cfg)
    assert not out.exists()


def test_user_template_and_its_special_tokens(tmp_path):
    text = (
        "{% for m in messages %}{% if m.role == 'assistant' %}<A>{{ target_start }}{{ m.content }}"
        "</A>{{ target_end }}{% else %}<U>{{ m.content }}</U>{% endif %}{% endfor %}"
    )
    rows = _chat_rows(20)
    src = _write(tmp_path / "chat.jsonl", rows)
    cfg = _cfg([src], tmp_path / "out", input__template=str(_template_file(tmp_path, text)))
    cfg.input.special_tokens = ["<A>", "</A>", "<U>", "</U>"]
    out = run_prepare(cfg)
    sp = load_processor(out / "tokenizer.model")
    for (ids, mask), row in zip(_docs(out), rows, strict=True):
        answers = [t["content"] + "</A>" for t in row["messages"] if t["role"] == "assistant"]
        assert [_text(sp, ids[a:b]) for a, b in _target_runs(mask[:-1])] == answers
    for token in cfg.input.special_tokens:  # reserved: one piece each
        assert [p for p in sp.encode(f"x{token}x", out_type=str) if p != "\u2581"][1] == token
    block = json.loads((out / "manifest.json").read_text())["instruct"]
    assert block["template"]["name"] == str((tmp_path / "tpl.jinja").resolve())
    assert block["template"]["text"] == text and block["special_tokens"] == cfg.input.special_tokens


def test_missing_special_token_of_a_given_tokenizer(tmp_path, sp_model):
    src = _write(tmp_path / "chat.jsonl", _chat_rows(2))
    out = tmp_path / "out"
    cfg = _cfg([src], out, sp_model, input__template="default")
    with pytest.raises(
        ConfigError, match=r"tokenizer\.model=.*small\.model.*'<\|system\|>'.*[Rr]etrain"
    ):
        run_prepare(cfg)
    assert not out.exists()


def test_reuse_verify_and_stale_mask(tmp_path, sp_model):
    src = _write(tmp_path / "chat.jsonl", _chat_rows(10))
    out = tmp_path / "out"
    cfg = _cfg([src], out, sp_model, input__template="plain")
    run_prepare(cfg)
    mask_bin = out / "shard_00000.loss_mask.bin"
    good = mask_bin.read_bytes()
    mask_bin.write_bytes(bytes(len(good)))  # damaged mask: the shard is rebuilt, not reused
    manifest = json.loads((out / "manifest.json").read_text())
    assert verify_dir(out, manifest) == [
        "shard_00000.loss_mask.bin: sha256 differs from the manifest"
    ]
    run_prepare(cfg)
    assert mask_bin.read_bytes() == good
    from data_pipeline.inspect import main as inspect_main

    assert inspect_main([str(out), "--no-verify", "--json"]) == 0
    from data_pipeline.merge import merge

    with pytest.raises(OutputError, match="instruction data"):
        merge([out], tmp_path / "merged")
    # the same dir rebuilt from plain text (same tokenizer) keeps no loss mask behind
    text = _write(tmp_path / "text.jsonl", [{"text": "plain text document"}])
    manifest = json.loads(
        (run_prepare(make_cfg([text], out, sp_model)) / "manifest.json").read_text()
    )
    assert "instruct" not in manifest and "loss_mask" not in manifest["shards"][0]
    assert not list(out.glob("*loss_mask*"))


def test_parquet_chat_input_equals_jsonl(tmp_path, sp_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _chat_rows(6)
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    out = run_prepare(_cfg([path], tmp_path / "pq", sp_model, input__template="plain"))
    src = _write(tmp_path / "chat.jsonl", rows)
    ref = run_prepare(_cfg([src], tmp_path / "jsonl", sp_model, input__template="plain"))
    got, want = _docs(out), _docs(ref)
    assert len(got) == len(rows)
    for (ids, mask), (ref_ids, ref_mask) in zip(got, want, strict=True):
        assert ids.tolist() == ref_ids.tolist() and mask.tolist() == ref_mask.tolist()
