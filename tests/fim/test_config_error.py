"""FIM on with data whose tokenizer lacks the sentinels: `python -m pretrain` exits 2 at start.

The data directory is prepared by the real job (`data_pipeline.prepare.run_prepare`) with
tokenizer.reserved_tokens=[], as data prepared before the sentinels existed would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import ConfigError
from pretrain.data import SentencePieceTokenizer
from pretrain.data_checks import read_manifest
from pretrain.fim.infill import sentinel_ids
from tests.checkpoint._common import single_process
from tests.conftest import stdlib_sample_files


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare

    cfg = PrepareConfig(
        input=InputConfig(name="no_sentinels", paths=stdlib_sample_files(300_000), format="text"),
        tokenizer=TokenizerConfig(vocab_size=512, reserved_tokens=[]),
        output=OutputConfig(dir=str(tmp_path_factory.mktemp("plain") / "data"), num_shards=1),
        workers=1,
        progress=False,
    )
    return run_prepare(cfg)


def test_fim_without_sentinels_is_a_config_error(plain_data: Path, tmp_path: Path) -> None:
    overrides = [f"data.paths=[{plain_data}]", "data.fim.rate=0.5", "train.max_steps=1"]
    proc = single_process(overrides, tmp_path / "run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "data.fim.prefix_token" in out and "<fim_prefix>" in out, out[-3000:]
    assert "python -m data_pipeline" in out  # how to fix it
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_infill_prompt_refuses_a_tokenizer_without_sentinels(plain_data: Path) -> None:
    sp = SentencePieceTokenizer(read_manifest(plain_data)).processor
    with pytest.raises(ConfigError, match="data.fim.prefix_token"):
        sentinel_ids(sp, {"prefix": "<fim_prefix>"}, str(plain_data))
