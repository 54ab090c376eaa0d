"""The exported Hugging Face tokenizer encodes and decodes exactly like the data's SentencePiece.

Both export families (LlamaForCausalLM, GPT2LMHeadModel: AutoTokenizer picks the tokenizer class
from config.json's model_type and tokenizer_config.json) get the folder files the export writes
(`mapping.hf_config` + `write_tokenizer`), loaded as AutoTokenizer loads them. transformers 5
ignores `use_fast` (one class); both values are checked so a downgrade would be caught too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import stdlib_sample_files

TEXTS = [
    "    return x\n",
    "\tif a:\r\n\t\tb()",
    "  ünïcödé — ✓ 中文",
    "def f(a, b):\n    if a:\n        return b  # done\n\n\n",
    " x",
    "  leading and trailing  ",
    "x ",
    " ",
    "\n",
    "",
    "a</s>b<s>c<pad><unk>",  # special-token strings in text are text, as for SentencePiece
    "emoji 🙂 and \x00 control \x7f",
    "x = 1\r\n\r\n  y = 2\t \n",
]
"""Indentation, tabs, CRLF, leading/trailing spaces, unicode, byte fallback, special strings."""

LLAMA = {
    "normalization": "RMSNorm",
    "activation": "swiglu",
    "position_embedding_type": "rope",
    "num_query_groups": 2,
    "add_bias_linear": False,
    "share_embeddings_and_output_weights": False,
}


def _write_export_files(out: Path, tokenizer_model: Path, family: str) -> None:
    from pretrain.config import ModelConfig
    from pretrain.hf import mapping
    from pretrain.hf.tokenizer import FIM_PIECES, control_pieces, special_ids, write_tokenizer

    model_cfg = ModelConfig(**(LLAMA if family == "llama" else {}))
    assert mapping.hf_family(model_cfg) == family
    special = special_ids(tokenizer_model)
    config = mapping.hf_config(model_cfg, special["vocab_size"], family, special, torch.float32)
    out.mkdir(parents=True)
    config.save_pretrained(str(out))
    fim = control_pieces(tokenizer_model, list(FIM_PIECES))  # as pretrain.hf.export passes them
    write_tokenizer(out, tokenizer_model, special, model_cfg.max_position_embeddings, fim)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def export_dir(request, prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tokenizer and config files an export of that family has."""
    out = tmp_path_factory.mktemp("tok") / request.param
    _write_export_files(out, prepared_data / "tokenizer.model", request.param)
    return out


def _sp(folder: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


@pytest.mark.parametrize("use_fast", [False, True])
def test_encode_equals_sentencepiece_and_decode_round_trips(export_dir: Path, use_fast: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export_dir), use_fast=use_fast)
    sp = _sp(export_dir)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == sp.encode(text), (text, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids) == text, (text, tok.decode(ids))
        assert tok.decode(ids, skip_special_tokens=True) == sp.decode(ids) == text
    # the dummy prefix is one token of its own here: "    x" is "▁" x5 + "x" (SentencePiece)
    assert tok.convert_ids_to_tokens(tok("    x")["input_ids"]) == [
        sp.id_to_piece(i) for i in sp.encode("    x")
    ]
    assert tok.eos_token_id == sp.eos_id() and tok.pad_token_id == sp.pad_id()
    assert tok.decode([sp.eos_id()], skip_special_tokens=True) == ""


def test_whole_corpus_sample_encodes_identically(export_dir: Path) -> None:
    """Every token of ~40 standard-library files (the training corpus) is SentencePiece's."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(export_dir))
    sp = _sp(export_dir)
    texts = [Path(p).read_text(encoding="utf-8") for p in stdlib_sample_files(400_000)]
    ours = tok(texts)["input_ids"]
    assert sum(map(len, ours)) > 50_000
    assert ours == sp.encode(texts)
    assert tok.batch_decode(ours) == texts


def test_tokenizer_files_name_the_generic_fast_class(export_dir: Path) -> None:
    """LlamaTokenizer would rebuild a Metaspace pipeline that drops one leading space."""
    from transformers import AutoTokenizer

    config = json.loads((export_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["split_special_tokens"] is True
    assert (export_dir / "tokenizer.model").is_file()
    tok = AutoTokenizer.from_pretrained(str(export_dir))
    assert tok("x")["input_ids"] == _sp(export_dir).encode("x")  # no BOS/EOS added


def _inside(sp, before: str, text: str) -> list[int]:
    """The tokens `text` has inside a document right after `before` (a token boundary)."""
    head, whole = sp.encode(before), sp.encode(before + text)
    assert whole[: len(head)] == head, (before, text)
    return whole[len(head) :]


FIM_PROMPTS = [
    ("def f(a):\n", "    return a\n"),
    ("import os\n\n", "print(os.sep)\n"),
    ("x = [1, 2, 3]", ""),
    ("", "    pass\n"),
]
"""(prefix, suffix) pairs of infilling prompts; each prefix ends at a token boundary."""


def test_fim_sentinels_in_text_are_their_ids(export_dir: Path) -> None:
    """`<fim_prefix>` a `<fim_suffix>` b `<fim_middle>` encodes as training wrote it: the
    prefix as the document's start (dummy-prefix space), the suffix as inside the document."""
    from transformers import AutoTokenizer

    from pretrain.hf.tokenizer import FIM_PIECES

    tok = AutoTokenizer.from_pretrained(str(export_dir))
    sp = _sp(export_dir)
    prefix, middle, suffix, pad = (sp.piece_to_id(p) for p in FIM_PIECES)
    assert all(sp.is_control(i) for i in (prefix, middle, suffix, pad))
    assert [tok.convert_tokens_to_ids(p) for p in FIM_PIECES] == [prefix, middle, suffix, pad]
    for before, after in FIM_PROMPTS:
        text = f"<fim_prefix>{before}<fim_suffix>{after}<fim_middle>"
        ids = tok(text)["input_ids"]
        inside = _inside(sp, before + "x\n", after)  # the suffix follows some middle text
        assert ids == [prefix, *sp.encode(before), suffix, *inside, middle], (text, ids)
        assert tok.decode(ids) == text  # sentinels are not "special": written back, not skipped
        assert tok.decode(ids, skip_special_tokens=True) == text
    spm_text = "<fim_prefix><fim_suffix>    return a\n<fim_middle>"  # SPM: suffix first
    assert tok(spm_text)["input_ids"] == [
        prefix,
        suffix,
        *_inside(sp, "x\n", "    return a\n"),
        middle,
    ]
    assert tok("a<fim_pad>b")["input_ids"] == [*sp.encode("a"), pad, *_inside(sp, "a", "b")]
    # the other control pieces stay text (split_special_tokens): as SentencePiece encodes them
    assert tok("</s><mask>")["input_ids"] == sp.encode("</s><mask>")


def test_fim_prompt_ids_equal_the_infill_cli(export_dir: Path) -> None:
    """transformers users get the ids `python -m pretrain.generate suffix=...` prompts with."""
    from transformers import AutoTokenizer

    from pretrain.config import FimConfig
    from pretrain.fim.infill import prompt_ids, sentinel_ids

    tok = AutoTokenizer.from_pretrained(str(export_dir))
    sp = _sp(export_dir)
    ids = sentinel_ids(sp, FimConfig().tokens(), str(export_dir))
    for before, after in [*FIM_PROMPTS, (" lead", "\n\n  tail "), ("a\tb", "\r\nc")]:
        expected, _ = prompt_ids(sp, before, after, ids, 10_000)
        text = f"<fim_prefix>{before}<fim_suffix>{after}<fim_middle>"
        assert tok(text)["input_ids"] == expected, (before, after)


def test_fim_pieces_only_where_the_tokenizer_has_them(tmp_path: Path) -> None:
    import sentencepiece as spm

    from pretrain.hf.tokenizer import FIM_PIECES, control_pieces, sentencepiece_backend

    path = tmp_path / "plain.model"
    texts = [Path(p).read_text(encoding="utf-8") for p in stdlib_sample_files(60_000)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(path.with_suffix("")),
        model_type="bpe",
        vocab_size=300,
        minloglevel=2,
        user_defined_symbols=["<fim_pad>"],  # user-defined, not control: SentencePiece's own
    )
    assert control_pieces(path, list(FIM_PIECES)) == []
    backend = sentencepiece_backend(path, [])
    assert backend.get_added_tokens_decoder() == {}


OTHER_SETTINGS = {
    "nfkc_collapse_whitespace": {},  # SentencePiece's defaults: nmt_nfkc, extra whitespace removed
    "no_dummy_prefix": {
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": False,
        "allow_whitespace_only_pieces": True,
    },
    "user_defined_pieces": {
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "allow_whitespace_only_pieces": True,
        "user_defined_symbols": ["<tab>", "def"],
    },
}
"""BPE models a user may ship with `tokenizer=PATH`, other than data_pipeline's settings."""


@pytest.mark.parametrize("settings", list(OTHER_SETTINGS))
def test_other_sentencepiece_settings_encode_identically(settings: str, tmp_path: Path) -> None:
    import io

    import sentencepiece as spm

    from pretrain.hf.tokenizer import sentencepiece_backend

    texts = [Path(p).read_text(encoding="utf-8") for p in stdlib_sample_files(150_000)]
    lines = [line for text in texts for line in text.splitlines(keepends=True) if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[:8000]),
        model_writer=model,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,
        minloglevel=2,
        **OTHER_SETTINGS[settings],
    )
    path = tmp_path / "other.model"
    path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    backend = sentencepiece_backend(path)
    for text in [*TEXTS, "def f():\n\tdef<tab>x", *texts]:
        ids = sp.encode(text)
        assert backend.encode(text).ids == ids, text[:80]
        assert backend.decode(ids, skip_special_tokens=True) == sp.decode(ids), text[:80]
