"""Infill prompts (pretrain.fim.infill) with the real `prepared_data` tokenizer, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.data import SentencePieceTokenizer
from pretrain.data_checks import read_manifest
from pretrain.fim.infill import Infill, middle_text, prompt_ids, sentinel_ids, suffix_processor

PREFIX = "def area(r):\n"
SUFFIX = "return pi * r * r\n"


@pytest.fixture(scope="module")
def sp(prepared_data: Path):
    return SentencePieceTokenizer(read_manifest(prepared_data)).processor


@pytest.fixture(scope="module")
def ids(sp) -> dict[str, int]:
    pieces = {"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"}
    return sentinel_ids(sp, pieces, "prepared_data")


def test_prompt_is_psm_up_to_the_middle_sentinel(sp, ids) -> None:
    prompt, prefix_ids = prompt_ids(sp, PREFIX, SUFFIX, ids, 1000)
    suffix_ids = suffix_processor(sp).encode(SUFFIX)
    assert prompt == [ids["prefix"], *sp.encode(PREFIX), ids["suffix"], *suffix_ids, ids["middle"]]
    assert prefix_ids == sp.encode(PREFIX)
    # the suffix is mid-document text: no dummy-prefix space in front of it
    assert sp.decode(suffix_ids) == SUFFIX and suffix_ids != sp.encode(SUFFIX)
    assert not sp.id_to_piece(suffix_ids[0]).startswith("▁")
    assert sp.id_to_piece(sp.encode(SUFFIX)[0]).startswith("▁")


def test_long_prompts_are_cut_away_from_the_middle(sp, ids) -> None:
    prefix, suffix = "x = 1\n" * 40, "y = 2\n" * 40
    prompt, prefix_ids = prompt_ids(sp, prefix, suffix, ids, 33)
    full_pre, full_suf = sp.encode(prefix), suffix_processor(sp).encode(suffix)
    assert len(prompt) == 33 and prompt[0] == ids["prefix"] and prompt[-1] == ids["middle"]
    cut = prompt.index(ids["suffix"])
    assert prefix_ids == prompt[1:cut] == full_pre[len(full_pre) - len(prefix_ids) :]
    assert prompt[cut + 1 : -1] == full_suf[: len(prompt) - cut - 2]
    assert len(prefix_ids) >= 15 and len(prompt) - cut - 2 >= 15


def test_middle_is_decoded_in_context_and_ends_at_eod(sp) -> None:
    prefix_ids = sp.encode(PREFIX)
    middle = "    pi = 3.14\n    "
    new = [*sp.encode(PREFIX + middle)[len(prefix_ids) :], sp.eos_id(), *sp.encode("junk")]
    text = middle_text(sp.decode, prefix_ids, new, sp.eos_id())
    assert text == middle
    assert Infill(PREFIX, text, SUFFIX).text == PREFIX + middle + SUFFIX


def test_generate_suffix_keys_are_checked(tmp_path: Path) -> None:
    from pretrain.config import ConfigError
    from pretrain.generate import GenerateConfig, check_generate_config, read_suffix

    ckpt = str(tmp_path)
    with pytest.raises(ConfigError, match="suffix=... or suffix_file=..., not both"):
        check_generate_config(GenerateConfig(checkpoint=ckpt, suffix="a", suffix_file="b"))
    with pytest.raises(ConfigError, match="suffix_file=.*does not exist"):
        check_generate_config(GenerateConfig(checkpoint=ckpt, suffix_file=str(tmp_path / "no")))
    path = tmp_path / "after.py"
    path.write_text("    return y\n", encoding="utf-8")
    cfg = GenerateConfig(checkpoint=ckpt, suffix_file=str(path))
    check_generate_config(cfg)
    assert read_suffix(cfg) == "    return y\n"
    assert read_suffix(GenerateConfig(checkpoint=ckpt)) is None
