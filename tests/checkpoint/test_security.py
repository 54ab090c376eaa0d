"""Nothing a run writes (checkpoints, configs, logs, W&B files) contains secret env values."""

from __future__ import annotations

from pathlib import Path

import pytest

SECRETS = (b"wandb-secret-0123456789", b"tok-secret-98765")
"""Values the reference run got as WANDB_API_KEY and MY_SERVICE_TOKEN (see conftest.py)."""


@pytest.mark.distributed
def test_run_dir_has_no_secrets(reference_run: Path) -> None:
    files = [p for p in reference_run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"meta.json", "config.yaml", "common.pt", "metrics.jsonl"} <= names
    leaks = [str(p) for p in files for s in SECRETS if s in p.read_bytes()]
    assert leaks == []
