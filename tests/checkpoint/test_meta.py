"""meta.json: secret scrubbing and the compatibility checks of a resume (no torch.distributed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain.checkpoint import CheckpointError
from pretrain.checkpoint import meta as ckpt_meta
from pretrain.config import PretrainConfig
from pretrain.state import TrainState

MANIFEST = {"sha256": "d" * 64, "tokenizer": {"sha256": "t" * 64, "vocab_size": 512, "eod_id": 2}}


def _meta(cfg: PretrainConfig | None = None) -> dict:
    cfg = cfg or PretrainConfig()
    cfg.data.paths = ["/data/a"]
    meta = ckpt_meta.build_meta(
        cfg,
        train_state=TrainState(step=7, wandb_run_id="abc"),
        layout={"world_size": 2},
        tokenizer=ckpt_meta.tokenizer_of([MANIFEST]),
        data=ckpt_meta.data_fingerprint(cfg, [MANIFEST]),
        vocab_size=512,
    )
    return json.loads(json.dumps(meta))  # what read_meta would return


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("WANDB_API_KEY", True),
        ("hf_token", True),
        ("DB-PASSWORD", True),
        ("aws_secret", True),
        ("tokenizer", False),
        ("max_new_tokens", False),
        ("consumed_tokens", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert ckpt_meta.is_secret_name(name) is secret


def test_scrub_secrets_keys_and_env_values() -> None:
    env = {"WANDB_API_KEY": "0123456789abcdef", "PATH": "/usr/bin", "MY_TOKEN": "tok-XYZ-123"}
    secrets = ckpt_meta.secret_values(env)
    assert secrets == {"0123456789abcdef", "tok-XYZ-123"}
    tree = {
        "api_key": "k",
        "tags": ["x tok-XYZ-123 y"],
        "nested": {"note": "0123456789abcdef"},
        "tokenizer": {"path": "tokenizer.model"},
        "token_budget_key": None,
    }
    out = ckpt_meta.scrub_secrets(tree, secrets)
    assert out["api_key"] == ckpt_meta.REDACTED
    assert out["tags"] == [f"x {ckpt_meta.REDACTED} y"]
    assert out["nested"]["note"] == ckpt_meta.REDACTED
    assert out["tokenizer"] == {"path": "tokenizer.model"}
    assert out["token_budget_key"] is None


def test_meta_records_state_arch_data() -> None:
    meta = _meta()
    assert meta["step"] == 7 and meta["train_state"]["wandb_run_id"] == "abc"
    assert meta["arch"]["hidden_size"] == 64 and meta["arch"]["vocab_size"] == 512
    assert meta["data"] == [{"path": "/data/a", "sha256": "d" * 64}]
    assert meta["tokenizer"]["sha256"] == "t" * 64


def test_compatible_passes_for_same_run() -> None:
    cfg = PretrainConfig()
    cfg.data.paths = ["/data/a"]
    ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [MANIFEST], 512, weights_only=False)


def test_model_change_names_the_key() -> None:
    cfg = PretrainConfig()
    cfg.data.paths = ["/data/a"]
    cfg.model.hidden_size = 128
    cfg.model.normalization = "RMSNorm"
    with pytest.raises(CheckpointError) as err:
        ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [MANIFEST], 512, False)
    msg = str(err.value)
    assert "model.hidden_size: checkpoint has 64, this run has 128" in msg
    assert "model.normalization: checkpoint has 'LayerNorm', this run has 'RMSNorm'" in msg


def test_tokenizer_and_data_changes() -> None:
    cfg = PretrainConfig()
    cfg.data.paths = ["/data/a"]
    changed = copy.deepcopy(MANIFEST)
    changed["sha256"] = "e" * 64
    with pytest.raises(CheckpointError, match=r"data.paths\[0\] \(/data/a\): manifest.json sha256"):
        ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [changed], 512, False)
    # weights_only=true starts fresh training: another dataset is allowed, another tokenizer not
    ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [changed], 512, True)
    changed["tokenizer"]["sha256"] = "u" * 64
    with pytest.raises(CheckpointError, match="tokenizer changed"):
        ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [changed], 512, True)
    with pytest.raises(CheckpointError, match="vocab_size: checkpoint has 512, this run has 640"):
        ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [MANIFEST], 640, True)


def test_read_meta_rejects_unknown_version(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        ckpt_meta.read_meta(tmp_path)


def test_resume_changes_are_reported_not_refused() -> None:
    meta = _meta()
    cfg = PretrainConfig()
    assert ckpt_meta.resume_changes(meta, cfg) == []
    cfg.train.max_steps, cfg.optim.lr, cfg.train.global_batch_size = 40, 1e-3, 16
    notes = ckpt_meta.resume_changes(meta, cfg)
    assert len(notes) == 1 and notes[0].startswith("train.global_batch_size: 8 -> 16"), notes
    assert "data order" in notes[0]


def test_schedule_overridden_by_checkpoint_is_reported() -> None:
    configured = ckpt_meta.schedule_of(SimpleNamespace(max_lr=1e-3, lr_decay_steps=40))
    restored = ckpt_meta.schedule_of(SimpleNamespace(max_lr=3e-3, lr_decay_steps=40))
    assert ckpt_meta.schedule_changes(configured, configured) == []
    notes = ckpt_meta.schedule_changes(configured, restored)
    assert notes == [
        "optim.lr: this config gives 0.001, the checkpoint's 0.003 is used (the LR schedule "
        "continues; for a new one start a new run with checkpoint.weights_only=true)"
    ]


def test_rng_request_only_asks_for_saved_components() -> None:
    import torch

    from pretrain.checkpoint.state import select_rng

    states = {"torch": torch.zeros(2), "cuda": torch.ones(2)}  # e.g. this run is on GPU
    assert select_rng(states, None) is states  # older checkpoints: everything
    assert list(select_rng(states, ["python", "torch"])) == ["torch"]  # saved on CPU


def test_precision_change_needs_weights_only() -> None:
    cfg = PretrainConfig()
    cfg.data.paths, cfg.precision = ["/data/a"], "bf16"
    with pytest.raises(CheckpointError, match="precision: checkpoint has 'fp32', this run has"):
        ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [MANIFEST], 512, weights_only=False)
    ckpt_meta.check_compatible(_meta(), Path("ck"), cfg, [MANIFEST], 512, weights_only=True)
