"""The BERT export's tokenizer (`write_bert_tokenizer`): training's <s> ... </s> frame, <pad>
padding, and `<mask>` in the text as the mask id with the text around it tokenized as inside a
document, so the fill-mask pipeline sees what training saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TEXTS = ["def main(args):\n    return 0\n", "  x = 1", "a", ""]


@pytest.fixture(scope="module")
def bert_tok_dir(prepared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pretrain.hf.tokenizer import special_ids, write_bert_tokenizer

    model = prepared_data / "tokenizer.model"
    out = tmp_path_factory.mktemp("bert_tok")
    write_bert_tokenizer(out, model, special_ids(model), 256, "<mask>")
    return out


def _sp(folder: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_text_is_framed_like_training(bert_tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_tok_dir))
    sp = _sp(bert_tok_dir)
    cls, sep, pad = sp.bos_id(), sp.eos_id(), sp.pad_id()
    assert (tok.cls_token_id, tok.sep_token_id) == (cls, sep)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (cls, sep, pad)
    for text in TEXTS:
        assert tok(text)["input_ids"] == [cls, *sp.encode(text), sep], text
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    batch = tok(["x", "def f(): pass"], padding=True)
    assert batch["input_ids"][0][-1] == pad and batch["attention_mask"][0][-1] == 0
    pair = tok("a", "b")["input_ids"]
    assert pair == [cls, *sp.encode("a"), sep, *sp.encode("b"), sep]


def test_mask_in_text_is_the_mask_id(bert_tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_tok_dir))
    sp = _sp(bert_tok_dir)
    mask = sp.piece_to_id("<mask>")
    assert sp.is_control(mask) and tok.mask_token == "<mask>" and tok.mask_token_id == mask
    before, word, after = "def main(", "args", "):\n"
    head, with_word = sp.encode(before), sp.encode(before + word)
    whole = sp.encode(before + word + after)
    assert with_word[: len(head)] == head and whole[: len(with_word)] == with_word
    inside = whole[len(with_word) :]  # "):\n" as tokenized inside the document
    ids = tok(f"{before}<mask>{after}")["input_ids"]
    assert ids == [sp.bos_id(), *head, mask, *inside, sp.eos_id()]
    x_inside = sp.encode("a x")[len(sp.encode("a")) :]
    assert tok("<mask> x")["input_ids"] == [sp.bos_id(), mask, *x_inside, sp.eos_id()]
    assert tok.decode(ids, skip_special_tokens=True) == before + after
    added = json.loads((bert_tok_dir / "tokenizer.json").read_text())["added_tokens"]
    assert {t["content"]: t["special"] for t in added}["<mask>"] is True
