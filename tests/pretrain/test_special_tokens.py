"""pretrain.special_tokens: which tokenizer pieces an objective may use (issue 12).

A sentinel must be one id that text never produces by accident: a control piece (what
`python -m data_pipeline` reserves) or a user-defined one. An ordinary text piece, or a string
the tokenizer does not have, is a config error that names the key and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.config import ConfigError, PretrainConfig
from pretrain.special_tokens import check_objective_tokens, fim_ids, mlm_ids, piece_ids


def _manifest(data_dir: Path) -> dict:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["dir"] = str(data_dir)
    return manifest


def test_reserved_pieces_give_the_ids(prepared_data: Path) -> None:
    manifest = _manifest(prepared_data)
    specials = manifest["tokenizer"]["special_tokens"]
    cfg = PretrainConfig()
    assert fim_ids(cfg, manifest) == {
        "prefix": specials["<fim_prefix>"],
        "middle": specials["<fim_middle>"],
        "suffix": specials["<fim_suffix>"],
        "pad": specials["<fim_pad>"],
    }
    assert mlm_ids(cfg, manifest) == {"cls": 1, "sep": 2, "pad": 3, "mask": specials["<mask>"]}


def test_ordinary_piece_is_refused(prepared_data: Path) -> None:
    import sentencepiece as spm

    manifest = _manifest(prepared_data)
    sp = spm.SentencePieceProcessor(model_file=str(prepared_data / "tokenizer.model"))
    ordinary = sp.id_to_piece(sp.encode("def")[0])
    with pytest.raises(ConfigError, match="data.fim.prefix_token=.*ordinary text piece"):
        piece_ids(manifest, {"data.fim.prefix_token": ordinary})


def test_unknown_piece_names_key_and_fix(prepared_data: Path) -> None:
    cfg = PretrainConfig()
    cfg.data.fim.rate = 0.5
    cfg.data.fim.suffix_token = "<SUF>"
    with pytest.raises(ConfigError) as err:
        check_objective_tokens(cfg, [_manifest(prepared_data)])
    message = str(err.value)
    assert "data.fim.suffix_token='<SUF>'" in message
    assert "python -m data_pipeline" in message and "<fim_suffix>" in message
    cfg.data.fim.rate = 0.0  # FIM off: the sentinels are not needed
    check_objective_tokens(cfg, [_manifest(prepared_data)])


def test_mlm_mask_token_checked(prepared_data: Path) -> None:
    cfg = PretrainConfig()
    cfg.objective.name = "mlm"
    cfg.objective.mask_token = "[MASK]"
    with pytest.raises(ConfigError, match=r"objective.mask_token='\[MASK\]'"):
        check_objective_tokens(cfg, [_manifest(prepared_data)])
