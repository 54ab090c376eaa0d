"""BERT export mapping (`pretrain.hf.bert`), in process: a random-init megatron BertModel mapped to
`MegatronBertForMaskedLM` computes the same logits, and what MegatronBert cannot express is
refused.

One gloo process (tests/sft/_inproc.process_group). The vocabulary (500) is not a multiple of
128, so megatron pads the table to 512 rows and the mapping must drop 12. fp32 logits agree to
1e-4 absolute (observed: 0.0 on CPU; the margin is for other kernels) at every attended
position of a batch with and without padding; padded query positions are not compared
(megatron masks their whole attention row, transformers only the padded keys: neither output
is used).
"""

from __future__ import annotations

import pytest
import torch

from tests.sft._inproc import process_group

VOCAB = 500
SEQ = 24
LOGIT_ATOL = 1e-4

VARIANTS = {
    "tied": {},
    "untied_no_bias": {"share_embeddings_and_output_weights": False, "add_bias_linear": False},
}


def _model_config(**extra):
    from pretrain.config import ModelConfig

    base = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "ffn_hidden_size": 128,
        "max_position_embeddings": 32,
    }
    return ModelConfig(**{**base, **extra})


def _randomize_(model: torch.nn.Module) -> None:
    """Non-trivial values everywhere (megatron initialises biases and norms to 0 / 1)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.05
            param.add_(noise if param.dim() > 1 else noise * 4)


@pytest.fixture(scope="module")
def group():
    with process_group():
        yield


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, SEQ, dtype=torch.long)
    mask[1, 17:] = 0  # padded sequences (their tokens are <pad>)
    mask[2, 5:] = 0
    tokens[mask == 0] = 3
    return tokens, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_megatron_bert_logits_equal_ours(group, variant: str, tmp_path) -> None:
    from transformers import AutoModelForMaskedLM

    from pretrain.config import ParallelConfig
    from pretrain.hf.bert import build_hf_bert
    from pretrain.hf.export import megatron_state_dict
    from pretrain.mlm.model import build_bert_model

    model_cfg = _model_config(**VARIANTS[variant])
    ours = build_bert_model(model_cfg, ParallelConfig(), VOCAB, "fp32")[0].eval()
    _randomize_(ours)
    special = {"pad_token_id": 3, "bos_token_id": 1, "eos_token_id": 2}
    hf = build_hf_bert(model_cfg, VOCAB, megatron_state_dict(ours), special, torch.float32)
    assert hf.config.vocab_size == VOCAB
    assert hf.config.tie_word_embeddings is model_cfg.share_embeddings_and_output_weights
    tokens, mask = _batch()
    with torch.no_grad():
        expected = ours(tokens, mask)[0][..., :VOCAB].float()
        unpadded = ours(tokens[:1], torch.ones_like(tokens[:1]))[0][..., :VOCAB].float()
        got = hf(input_ids=tokens, attention_mask=mask).logits.float()
        got_no_mask = hf(input_ids=tokens[:1]).logits.float()
    assert got.shape == expected.shape == (3, SEQ, VOCAB)
    attended = mask.bool()
    diff = (got - expected).abs()[attended]
    assert float(diff.max()) < LOGIT_ATOL, float(diff.max())
    assert float((got_no_mask - unpadded).abs().max()) < LOGIT_ATOL
    assert float(expected.abs().max()) > 0.5  # logits are not trivially small
    # padding changes the logits of the real tokens (the mask reaches both models)
    assert float((got[1, :17] - got_no_mask[0, :17]).abs().max()) > 1e-3
    # the saved folder loads back as the same model (tied or separate decoder weight and bias)
    hf.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = AutoModelForMaskedLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(loaded).__name__ == "MegatronBertForMaskedLM"
    with torch.no_grad():
        reloaded = loaded(input_ids=tokens, attention_mask=mask).logits.float()
    assert torch.equal(reloaded, got)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"position_embedding_type": "rope"}, "model.position_embedding_type=rope"),
        ({"normalization": "RMSNorm"}, "model.normalization=RMSNorm"),
        ({"activation": "swiglu"}, "model.activation=swiglu"),
        ({"num_query_groups": 2}, "model.num_query_groups=2"),
    ],
)
def test_unrepresentable_bert_is_refused(extra: dict, named: str) -> None:
    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.config import ConfigError
    from pretrain.hf.bert import check_bert_exportable, to_megatron_bert

    model_cfg = _model_config(**extra)
    with pytest.raises(CheckpointError, match=rf"MegatronBertForMaskedLM: {named}\b") as info:
        check_bert_exportable(model_cfg)
    assert isinstance(info.value, ConfigError)  # exit status 2 in the CLI
    assert "learned_absolute positions, LayerNorm, gelu" in str(info.value)
    with pytest.raises(CheckpointError, match=named):
        to_megatron_bert({}, model_cfg, VOCAB)  # refused before any tensor is read


def test_several_problems_are_named_together() -> None:
    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.hf.bert import check_bert_exportable

    llama_like = _model_config(
        position_embedding_type="rope", normalization="RMSNorm", activation="swiglu"
    )
    with pytest.raises(CheckpointError, match="rope, model.normalization=RMSNorm, model.act"):
        check_bert_exportable(llama_like)
    check_bert_exportable(_model_config(add_bias_linear=False))  # zero biases are fine
