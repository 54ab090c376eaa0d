"""tokenizer.reserved_tokens: the objective pieces a trained tokenizer reserves (issue 12).

They are SentencePiece control symbols: one id each, listed in the manifest, and never produced
from text, so a corpus that contains the literal string `<mask>` cannot inject a mask token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.config import PrepareConfig, TokenizerConfig, validate
from data_pipeline.errors import ConfigError

DEFAULT = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<mask>", "<image>"]


def test_trained_tokenizer_reserves_the_objective_pieces(prepared_data: Path) -> None:
    import sentencepiece as spm

    manifest = json.loads((prepared_data / "manifest.json").read_text())
    specials = manifest["tokenizer"]["special_tokens"]
    assert specials == {piece: 4 + i for i, piece in enumerate(DEFAULT)}
    sp = spm.SentencePieceProcessor(model_file=str(prepared_data / "tokenizer.model"))
    for piece, ident in specials.items():
        assert sp.id_to_piece(ident) == piece and sp.is_control(ident)
    text = "x = '<mask>'  # <fim_prefix> <fim_middle> <fim_suffix> <fim_pad>"
    assert not set(sp.encode(text)) & set(specials.values())
    assert sp.decode(sp.encode(text)) == text


def test_documents_never_contain_reserved_ids(prepared_data: Path) -> None:
    manifest = json.loads((prepared_data / "manifest.json").read_text())
    reserved = np.array(sorted(manifest["tokenizer"]["special_tokens"].values()))
    for shard in manifest["shards"]:
        ids = np.fromfile(prepared_data / f"{shard['prefix']}.bin", dtype=manifest["dtype"])
        assert ids.size == shard["num_tokens"]
        assert not np.isin(ids, reserved).any(), shard["prefix"]


@pytest.mark.parametrize(
    ("reserved", "words"),
    [
        (["<s>"], "SentencePiece's own pieces"),
        (["<mask>", "<mask>"], "twice"),
        (["<my mask>"], "whitespace"),
        ([""], "non-empty"),
    ],
)
def test_bad_reserved_tokens_are_config_errors(reserved: list[str], words: str) -> None:
    from data_pipeline.config import InputConfig

    cfg = PrepareConfig(
        input=InputConfig(paths=["x.txt"]), tokenizer=TokenizerConfig(reserved_tokens=reserved)
    )
    with pytest.raises(ConfigError, match="tokenizer.reserved_tokens") as err:
        validate(cfg)
    assert words in str(err.value)


def test_reserved_tokens_are_trainer_control_symbols() -> None:
    from data_pipeline.tokenizer import train_options

    assert train_options(TokenizerConfig())["control_symbols"] == DEFAULT
    assert "control_symbols" not in train_options(TokenizerConfig(reserved_tokens=[]))
