"""The LLaVA model in one process: bidirectional ViT, the combined-sequence loss, the stages.

Tiny models (ViT 2 x 64 on 32x32 images in 8x8 patches, GPT 2 x 64) on one gloo process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.checkpoint.state import unwrap
from pretrain.vlm.dataset import SampleLayout, text_tensors
from pretrain.vlm.loss import combined_loss_mask
from pretrain.vlm.model import build_llava_model, image_seq_len
from tests.sft._inproc import QUIET, compose, process_group, sft_context

IMAGE_ID, VOCAB = 9, 512


def _cfg(*extra: str):
    return compose(["objective=llava", "train.seq_length=16", "model.hidden_size=64", *extra])


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_vit_attention_is_bidirectional():
    """Changing only the last patch changes the first patch's (and the class token's) output:
    with megatron's local spec as is (causal), position 1 would only see positions 0 and 1."""
    with process_group():
        model = build_llava_model(_cfg(), VOCAB, IMAGE_ID)[0]
        vit = model.vision_model.eval()
        images = _images()
        changed = images.clone()
        changed[:, :, 24:, 24:] = -images[:, :, 24:, 24:]  # the last 8x8 patch only
        with torch.no_grad():
            before, after = vit(images), vit(changed)
    assert before.shape == (2, 17, 64)  # class token + 16 patches
    assert (before[:, -1] - after[:, -1]).abs().max() > 1e-3  # the patch itself
    assert (before[:, 1] - after[:, 1]).abs().max() > 1e-4  # the first patch sees it
    assert (before[:, 0] - after[:, 0]).abs().max() > 1e-4  # and the class token


def test_loss_positions_follow_the_text_labels():
    """Per-token losses over the combined sequence: position n - 1 + m holds text label m
    (n image embeddings); the combined mask is the text mask there, megatron's elsewhere."""
    cfg = _cfg()
    layout = SampleLayout(seq_length=16, image_token=IMAGE_ID, eod=2, pad=3)
    samples = [text_tensors(ids, layout) for ids in ([20, 21, 22], list(range(30, 50)))]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    n = image_seq_len(cfg.vision)
    with process_group():
        model = build_llava_model(cfg, VOCAB, IMAGE_ID)[0].eval()
        args = (_images(), batch["tokens"], batch["position_ids"], None)
        with torch.no_grad():
            losses, megatron_mask = model(
                *args, labels=batch["labels"], loss_mask=batch["loss_mask"]
            )
            logits, _ = model(*args)
    assert losses.shape == (2, 16 - 1 + n) and logits.shape[:2] == (2, 16 - 1 + n)
    picked = logits[:, n - 1 :].float()
    flat = picked.reshape(-1, picked.shape[-1])
    want = F.cross_entropy(flat, batch["labels"].reshape(-1), reduction="none")
    assert torch.allclose(losses[:, n - 1 :].reshape(-1), want.reshape(-1), atol=1e-5)
    ours = combined_loss_mask(batch["loss_mask"], n)
    assert ours[:, n - 1].tolist() == [1.0, 1.0]  # the first caption token is trained
    megatron_mask = megatron_mask.float()
    assert megatron_mask[:, n - 1].tolist() == [0.0, 0.0]  # megatron would drop it
    ours[:, n - 1] = 0
    assert torch.equal(ours, megatron_mask)
    assert ours[0].sum() == 3 and ours[1].sum() == 14  # caption[1:] + eod (cut to 14)


def _snapshot(ctx) -> dict[str, torch.Tensor]:
    model = unwrap(ctx.model[0])
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _part(name: str) -> str:
    return name.split(".")[0]


def _train_and_compare(overrides: list[str]) -> tuple[dict[str, bool], int, int]:
    """{part: changed} after 2 steps, optimizer parameters, trainable parameters."""
    from pretrain.train import train

    with sft_context(overrides) as ctx:
        before = _snapshot(ctx)
        model = unwrap(ctx.model[0])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        in_optimizer = sum(
            p.numel() for group in ctx.optimizer.param_groups for p in group["params"]
        )
        assert train(ctx) == 0
        after = _snapshot(ctx)
    changed: dict[str, bool] = {}
    for name, value in before.items():
        moved = not torch.equal(value, after[name])
        changed[_part(name)] = changed.get(_part(name), False) or moved
    return changed, in_optimizer, trainable


def _overrides(data, run_dir, *extra: str) -> list[str]:
    return [
        *QUIET,
        "objective=llava",
        f"data.paths=[{data}]",
        f"run.dir={run_dir}",
        "train.max_steps=2",
        "train.micro_batch_size=2",
        "train.global_batch_size=4",
        "train.seq_length=24",
        "model.hidden_size=64",
        "model.ffn_hidden_size=256",
        "optim.warmup_steps=0",
        *extra,
    ]


def test_align_trains_only_the_projector(image_text_data, tmp_path):
    changed, in_optimizer, trainable = _train_and_compare(
        _overrides(image_text_data, tmp_path / "align", "vision.stage=align")
    )
    assert changed == {"language_model": False, "vision_model": False, "vision_projection": True}
    assert in_optimizer == trainable  # frozen parameters are not in the optimizer
    h, ffn, vit = 64, 256, 64  # model.hidden_size, its ffn (the projector's), vision.hidden_size
    assert trainable == vit * ffn + ffn + ffn * h + h


def test_joint_with_a_frozen_vit(image_text_data, tmp_path):
    changed, in_optimizer, trainable = _train_and_compare(
        _overrides(image_text_data, tmp_path / "joint", "vision.freeze_vision=true")
    )
    assert changed == {"language_model": True, "vision_model": False, "vision_projection": True}
    assert in_optimizer == trainable
