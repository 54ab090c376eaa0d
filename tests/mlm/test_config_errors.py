"""objective=mlm refuses, before any step, data whose tokenizer has no mask piece (exit 2).

(Resuming a GPT run.dir with objective=mlm, and the reverse, are refused in
test_distributed.py, which has the runs to resume.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import stdlib_sample_files
from tests.pretrain._plain import run_plain


@pytest.fixture(scope="module")
def maskless_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data directory whose tokenizer was trained without reserved tokens."""
    from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare

    cfg = PrepareConfig(
        input=InputConfig(name="maskless", paths=stdlib_sample_files(300_000), format="text"),
        tokenizer=TokenizerConfig(vocab_size=512, reserved_tokens=[]),
        output=OutputConfig(dir=str(tmp_path_factory.mktemp("maskless") / "data"), num_shards=1),
        workers=1,
        progress=False,
    )
    return run_prepare(cfg)


def test_tokenizer_without_mask_piece_is_a_config_error(maskless_data: Path, tmp_path: Path):
    run = run_plain(["objective=mlm", f"data.paths=[{maskless_data}]"], tmp_path / "run")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "objective.mask_token='<mask>'" in run.stderr, run.stderr[-2000:]
    assert "python -m data_pipeline" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written
