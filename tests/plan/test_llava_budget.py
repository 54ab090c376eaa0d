"""The planner on objective=llava: epochs are counted in image-caption samples of the image-text
manifests (they have no token totals), and it says what it leaves out (the ViT, the projector)."""

from __future__ import annotations

from pretrain.config import (
    DataConfig,
    ObjectiveConfig,
    PretrainConfig,
    TrainConfig,
)
from pretrain.plan.budget import estimate_budget


def _manifest(samples: int) -> dict:
    return {"kind": "image_text", "image_text": {"num_samples": samples}}


def test_epochs_count_image_caption_samples():
    cfg = PretrainConfig(
        objective=ObjectiveConfig(name="llava"),
        data=DataConfig(paths=["a", "b"], split="90,10,0"),
        train=TrainConfig(max_steps=100, global_batch_size=32),
    )
    budget = estimate_budget(cfg, [_manifest(1000), _manifest(3000)])
    # 3200 samples, shared 1:3 by sample count, over the 90% train part of each dir
    assert abs(budget.epochs["a"] - 800 / 900) < 1e-9
    assert abs(budget.epochs["b"] - 2400 / 2700) < 1e-9
    assert any("ViT" in w and "not counted" in w for w in budget.warnings)
    assert not any("epochs over" in w for w in budget.warnings)

    longer = PretrainConfig(
        objective=cfg.objective,
        data=DataConfig(paths=["a"], valid_paths=["v"]),
        train=TrainConfig(max_steps=100, global_batch_size=32),
    )
    budget = estimate_budget(longer, [_manifest(1000)])
    assert budget.epochs["a"] == 3.2  # data.valid_paths: every sample of data.paths trains
    assert any("3.20 epochs over a" in w for w in budget.warnings)
