"""`python -m pretrain.export_hf` on an objective=llava checkpoint exports its language model as
a text GPT (GPT2LMHeadModel / LlamaForCausalLM): on a text prompt the Hugging Face logits equal
our LLaVA chunk's `.language_model` logits (fp32, 1e-5 absolute, as tests/checkpoint's export
test); the ViT and the projector are not exported (a log line says where they stay), and
`pretrain.generate` refuses the checkpoint with a pointer to `pretrain.caption`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from pretrain import export_hf
from pretrain.checkpoint import CheckpointError, meta, save_model_weights
from pretrain.config import ModelConfig, ParallelConfig, PretrainConfig
from pretrain.state import TrainState

VOCAB, SEQ = 128, 24
LOGIT_ATOL = 1e-5
FAMILIES = {
    "gpt2": ({}, "GPT2LMHeadModel"),
    "llama": (
        {
            "normalization": "RMSNorm",
            "activation": "swiglu",
            "position_embedding_type": "rope",
            "num_query_groups": 2,
            "add_bias_linear": False,
            "share_embeddings_and_output_weights": False,
        },
        "LlamaForCausalLM",
    ),
}


def _cfg(family: str) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.objective.name = "llava"
    shape = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, **FAMILIES[family][0]}
    cfg.model = dataclasses.replace(ModelConfig(), **shape)
    cfg.train.seq_length = SEQ
    return cfg


def _llava_checkpoint(root: Path, cfg: PretrainConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Save random LLaVA weights as a model-only checkpoint (1 process); returns the language
    model's logits on `tokens`."""
    from pretrain.parallel import init_distributed, teardown
    from pretrain.vlm.model import build_llava_model

    saved_env = dict(os.environ)
    init_distributed(ParallelConfig(), seed=1234)
    try:
        (chunk,) = build_llava_model(cfg, VOCAB, image_token_id=9)
        with torch.no_grad():
            for p in chunk.parameters():
                p.copy_(torch.randn_like(p) * 0.1)
        record = meta.build_meta(
            cfg,
            train_state=TrainState(step=4),
            layout=dict(meta.SINGLE_PROCESS_LAYOUT),
            tokenizer={"vocab_size": VOCAB},
            data=[],
            vocab_size=VOCAB,
        )
        save_model_weights([chunk], root, record, step=4)
        chunk.eval()
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        with torch.no_grad():
            return chunk.language_model(tokens, positions, None)[..., :VOCAB].float()
    finally:
        teardown()
        os.environ.clear()
        os.environ.update(saved_env)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_language_model_has_our_logits(
    family: str, image_text_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForCausalLM

    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    run = tmp_path / "llava"
    ours = _llava_checkpoint(run, _cfg(family), tokens)
    (run / "iter_0000004" / "tokenizer.model").write_bytes(
        (image_text_data / "tokenizer.model").read_bytes()
    )  # any SentencePiece model: export ships it (the logits do not depend on it)
    out = tmp_path / "hf"
    with caplog.at_level(logging.INFO):
        code = export_hf.main([f"checkpoint={run}", f"output={out}", "sample_prompt=null"])
    assert code == 0
    assert "ViT and the projector stay in the megatron checkpoint" in caplog.text
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == FAMILIES[family][1]
    with torch.no_grad():
        theirs = hf(tokens).logits.float()
    diff = float((ours - theirs).abs().max())
    assert diff < LOGIT_ATOL, diff
    assert float(ours.abs().max()) > 0.1  # not trivially small logits
    info = json.loads((out / "export_info.json").read_text())
    assert (info["objective"], info["exported"], info["step"]) == ("llava", "language_model", 4)
    names = set(hf.state_dict())
    assert not any("vision" in n or "projection" in n for n in names), names


def test_generate_refuses_a_llava_checkpoint(tmp_path: Path) -> None:
    from pretrain.hf.export import load_megatron_model

    run = tmp_path / "llava"
    _llava_checkpoint(run, _cfg("gpt2"), torch.zeros(1, 4, dtype=torch.long))
    refusal = r"objective=llava \(image-text\) checkpoint: caption images with `python -m pre"
    with pytest.raises(CheckpointError, match=refusal):
        load_megatron_model(run / "iter_0000004")
