"""vision.language_checkpoint: a text GPT checkpoint of ours fills the LLaVA chunks'
`.language_model` (every tensor equal, the ViT and projector untouched), and a checkpoint that
cannot is refused with a CheckpointError naming the key and every differing model key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import CheckpointError, layout, meta, save_model_weights
from pretrain.config import ModelConfig, ParallelConfig, PretrainConfig
from pretrain.state import TrainState
from pretrain.vlm.language_init import KEY, load_language_weights

VOCAB, SEQ = 128, 24
SHA = "a" * 64
MANIFESTS = [{"tokenizer": {"sha256": SHA, "vocab_size": VOCAB, "eod_id": 2}}]


@pytest.fixture(scope="module")
def dist():
    """A 1-process gloo group + megatron parallel_state (environment restored afterwards)."""
    from pretrain.parallel import init_distributed, teardown

    saved = dict(os.environ)
    info = init_distributed(ParallelConfig(), seed=1234)
    yield info
    teardown()
    os.environ.clear()
    os.environ.update(saved)


def _cfg(objective: str = "llava", **model: object) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.objective.name = objective
    shape = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, **model}
    cfg.model = dataclasses.replace(ModelConfig(), **shape)
    cfg.train.seq_length = SEQ
    return cfg


def _save(root: Path, cfg: PretrainConfig, sha: str = SHA, seed: int = 7) -> Path:
    """A model-only checkpoint of a GPT (objective lm) whose weights are all random."""
    from pretrain.model import build_model

    torch.manual_seed(seed)
    chunks = build_model(cfg.model, ParallelConfig(), VOCAB, SEQ, "fp32")
    with torch.no_grad():
        for p in chunks[0].parameters():
            p.copy_(torch.randn_like(p))
    record = meta.build_meta(
        cfg,
        train_state=TrainState(step=3),
        layout=dict(meta.SINGLE_PROCESS_LAYOUT),
        tokenizer={"sha256": sha, "vocab_size": VOCAB},
        data=[],
        vocab_size=VOCAB,
    )
    save_model_weights(chunks, root, record, step=3)
    return root


def _llava(cfg: PretrainConfig) -> list[torch.nn.Module]:
    from pretrain.vlm.model import build_llava_model

    return build_llava_model(cfg, VOCAB, image_token_id=9)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in module.state_dict().items()
        if isinstance(v, torch.Tensor) and "_extra_state" not in k
    }


def test_language_model_gets_every_tensor_of_the_gpt(dist, tmp_path: Path) -> None:
    from pretrain.model import build_model

    run = _save(tmp_path / "text_run", _cfg("lm"))
    torch.manual_seed(7)
    (gpt,) = build_model(_cfg("lm").model, ParallelConfig(), VOCAB, SEQ, "fp32")
    with torch.no_grad():
        for p in gpt.parameters():
            p.copy_(torch.randn_like(p))
    expected = _tensors(gpt)
    (chunk,) = _llava(_cfg())
    vision_before = _tensors(chunk.vision_model) | {
        f"p.{k}": v for k, v in _tensors(chunk.vision_projection).items()
    }
    before = _tensors(chunk.language_model)
    assert set(before) == set(expected)
    assert any(not torch.equal(before[k], expected[k]) for k in expected)

    load_language_weights([chunk], run, _cfg(), dist, MANIFESTS)  # a run dir: its latest

    after = _tensors(chunk.language_model)
    differ = [k for k in expected if not torch.equal(after[k], expected[k])]
    assert differ == [], differ
    assert len(expected) > 10
    vision_after = _tensors(chunk.vision_model) | {
        f"p.{k}": v for k, v in _tensors(chunk.vision_projection).items()
    }
    assert all(torch.equal(vision_before[k], vision_after[k]) for k in vision_before)
    # an iter_ dir works the same
    load_language_weights([chunk], run / layout.iter_dir_name(3), _cfg(), dist, MANIFESTS)


def test_refusals_name_the_key_and_what_differs(dist, tmp_path: Path) -> None:
    run = _save(tmp_path / "text_run", _cfg("lm"))
    (chunk,) = _llava(_cfg(num_layers=3, hidden_size=32))

    with pytest.raises(CheckpointError) as err:
        load_language_weights([chunk], run, _cfg(num_layers=3, hidden_size=32), dist, MANIFESTS)
    text = str(err.value)
    assert text.startswith(f"{KEY}={run / layout.iter_dir_name(3)}")
    assert "model.num_layers: checkpoint has 2, this run has 3" in text
    assert "model.hidden_size: checkpoint has 64, this run has 32" in text
    assert "model.ffn_size: checkpoint has 256, this run has 128" in text

    (chunk,) = _llava(_cfg())
    other_tokenizer = [{"tokenizer": {"sha256": "b" * 64, "vocab_size": VOCAB}}]
    with pytest.raises(CheckpointError, match="tokenizer: the checkpoint was trained with"):
        load_language_weights([chunk], run, _cfg(), dist, other_tokenizer)
    bigger_vocab = [{"tokenizer": {"sha256": SHA, "vocab_size": 256}}]
    with pytest.raises(CheckpointError, match="the tokenizer's vocab_size: checkpoint has 128"):
        load_language_weights([chunk], run, _cfg(), dist, bigger_vocab)

    for objective, what in (("mlm", "a BERT encoder"), ("llava", "an image-text model")):
        other = _save(tmp_path / objective, _cfg(objective))
        with pytest.raises(CheckpointError, match=f"objective={objective} checkpoint \\({what}"):
            load_language_weights([chunk], other, _cfg(), dist, MANIFESTS)

    with pytest.raises(CheckpointError, match=f"{KEY}={tmp_path / 'nowhere'} does not exist"):
        load_language_weights([chunk], tmp_path / "nowhere", _cfg(), dist, MANIFESTS)
    torn = tmp_path / "torn" / layout.iter_dir_name(1)
    torn.mkdir(parents=True)
    with pytest.raises(CheckpointError, match=f"{KEY}=.*is an incomplete checkpoint"):
        load_language_weights([chunk], torn, _cfg(), dist, MANIFESTS)
