"""LoRA on megatron's linear layers, in this process (a 1-process gloo group, TP1, fp32).

Numbers: zero-B adapters leave the logits bit-identical to the base; merged weights give the
adapter model's logits within 1e-5 absolute (fp32; logits are O(1)); one megatron optimizer
step changes only adapter tensors; the trainable count is the analytic adapter count.
"""

from __future__ import annotations

import os

import pytest
import torch

from pretrain.config import (
    ConfigError,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PeftConfig,
    PretrainConfig,
)

VOCAB, SEQ, HIDDEN, FFN, LAYERS = 128, 16, 64, 256, 2


@pytest.fixture(scope="module")
def group():
    """A 1-process gloo group + megatron parallel_state (environment restored afterwards)."""
    from pretrain.parallel import init_distributed, teardown

    saved = dict(os.environ)
    init_distributed(ParallelConfig(), seed=1234)
    yield
    teardown()
    os.environ.clear()
    os.environ.update(saved)


def _model(model_cfg: ModelConfig, lora: PeftConfig | None):
    from pretrain.model import build_model
    from pretrain.peft import apply_peft

    torch.manual_seed(1234)
    chunks = build_model(model_cfg, ParallelConfig(), VOCAB, SEQ, "fp32")
    if lora is not None:
        apply_peft(chunks, lora, seed=7)
    return chunks


def _logits(chunk: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    chunk.eval()
    with torch.no_grad():
        return chunk(tokens, positions, None).float()


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))


MODELS = {
    "gpt2": ModelConfig(num_layers=LAYERS, hidden_size=HIDDEN, ffn_hidden_size=FFN),
    "llama": ModelConfig(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        ffn_hidden_size=FFN,
        num_query_groups=2,
        normalization="RMSNorm",
        activation="swiglu",
        position_embedding_type="rope",
        add_bias_linear=False,
        share_embeddings_and_output_weights=False,
    ),
}


def _adapter_count(model_cfg: ModelConfig, rank: int) -> int:
    h, ffn = model_cfg.hidden_size, model_cfg.ffn_size()
    qkv = model_cfg.head_dim() * (model_cfg.num_attention_heads + 2 * model_cfg.kv_heads())
    fc1 = 2 * ffn if model_cfg.activation == "swiglu" else ffn
    per_layer = rank * (h + qkv) + rank * (h + h) + rank * (h + fc1) + rank * (ffn + h)
    return model_cfg.num_layers * per_layer


@pytest.mark.parametrize("family", sorted(MODELS))
def test_zero_b_is_the_base_and_merge_is_exact(group, family: str) -> None:
    from pretrain.peft import merge_lora_

    model_cfg = MODELS[family]
    base = _model(model_cfg, None)[0]
    lora = _model(model_cfg, PeftConfig(type="lora", rank=4, alpha=8.0))[0]
    tokens = _tokens()
    assert torch.equal(_logits(base, tokens), _logits(lora, tokens))  # B = 0: exactly the base
    generator = torch.Generator().manual_seed(3)
    for name, param in lora.named_parameters():
        if name.endswith("lora_B.weight"):
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    with_adapters = _logits(lora, tokens)
    assert (with_adapters - _logits(base, tokens)).abs().max() > 1e-2  # the adapters act
    merged = _model(model_cfg, PeftConfig(type="lora", rank=4, alpha=8.0))[0]
    merged.load_state_dict(lora.state_dict())
    assert merge_lora_([merged]) == 4 * LAYERS
    assert not any("lora" in k for k in merged.state_dict())
    assert set(merged.state_dict()) == set(base.state_dict())
    diff = (_logits(merged, tokens) - with_adapters).abs().max()
    assert diff < 1e-5, f"merged vs adapter logits differ by {diff}"


def test_only_adapters_train_and_are_counted(group) -> None:
    from pretrain.model import wrap_model
    from pretrain.optim import build_optimizer
    from pretrain.peft import parameter_split

    model_cfg, rank = MODELS["gpt2"], 4
    chunks = _model(model_cfg, PeftConfig(type="lora", rank=rank, alpha=8.0))
    trainable, total = parameter_split(chunks)
    assert trainable == _adapter_count(model_cfg, rank)
    assert total - trainable == sum(p.numel() for p in _model(model_cfg, None)[0].parameters())
    model = wrap_model(chunks, ParallelConfig(), "fp32")
    optimizer = build_optimizer(model, OptimConfig(lr=1e-2), ParallelConfig(), "fp32")
    held = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert held == trainable  # the optimizer holds only the adapters
    before = {k: v.detach().clone() for k, v in chunks[0].state_dict().items() if v is not None}
    tokens = _tokens()
    positions = torch.arange(SEQ).unsqueeze(0).expand_as(tokens)
    chunks[0].train()
    optimizer.zero_grad()
    for _ in range(2):  # step 1 moves B off zero; step 2 then moves A as well
        loss = model[0](tokens, positions, None, labels=tokens.roll(-1, 1)).mean()
        loss.backward()
        model[0].finish_grad_sync()
        ok, _, _ = optimizer.step()
        assert ok
        optimizer.zero_grad()
    after = chunks[0].state_dict()
    changed = {
        k for k, v in before.items() if isinstance(v, torch.Tensor) and not torch.equal(v, after[k])
    }
    adapters = {k for k in before if "lora_" in k}
    assert changed == adapters, f"changed {sorted(changed ^ adapters)}"


def _cfg(**peft) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.peft = PeftConfig(type="lora", **peft)
    cfg.checkpoint.load, cfg.checkpoint.weights_only = "/some/base", True
    cfg.run.dir = "/nonexistent/run"
    return cfg


@pytest.mark.parametrize(
    ("peft", "key"),
    [
        ({"rank": 0}, "peft.rank"),
        ({"alpha": 0.0}, "peft.alpha"),
        ({"dropout": 1.0}, "peft.dropout"),
        ({"target_modules": []}, "peft.target_modules"),
        ({"target_modules": ["q_proj"]}, "peft.target_modules"),
    ],
)
def test_validate_names_the_key(peft: dict, key: str) -> None:
    from pretrain.peft import validate_peft

    with pytest.raises(ConfigError, match=key):
        validate_peft(_cfg(**peft))


def test_validate_needs_a_base() -> None:
    from pretrain.peft import validate_peft

    validate_peft(_cfg())
    cfg = _cfg()
    cfg.checkpoint.weights_only = False
    with pytest.raises(ConfigError, match="checkpoint.load=BASE checkpoint.weights_only=true"):
        validate_peft(cfg)
    cfg.checkpoint.load = None
    with pytest.raises(ConfigError, match="checkpoint.weights_only"):
        validate_peft(cfg)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_peft_adapter_on_hf_base_gives_our_logits(group, family: str, tmp_path) -> None:
    """Our adapter in PEFT format, loaded with `peft` onto the HF base: our logits (fp32).

    Llama covers the q/k/v split of linear_qkv's B and the gate/up halves of linear_fc1's;
    GPT-2 the [q | k | v] row order of c_attn (Conv1D, fan_in_fan_out). Tolerance 1e-4
    absolute (logits are O(1)).
    """
    from peft import PeftModel

    from pretrain.hf import peft_format
    from pretrain.hf.export import build_hf_model, megatron_state_dict

    model_cfg, lora_cfg = MODELS[family], PeftConfig(type="lora", rank=4, alpha=8.0)
    base = _model(model_cfg, None)[0]
    lora = _model(model_cfg, lora_cfg)[0]
    generator = torch.Generator().manual_seed(5)
    for name, param in lora.named_parameters():
        if name.endswith("lora_B.weight"):
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    tokens = _tokens()
    ours = _logits(lora, tokens)[..., :VOCAB]
    tensors = peft_format.adapter_tensors(megatron_state_dict(lora), model_cfg, family)
    record = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": lora_cfg.target_modules}
    peft_format.write_adapter(tmp_path, tensors, peft_format.adapter_config(record, family, None))
    hf_base, _ = build_hf_model(model_cfg, VOCAB, base, {}, torch.float32)
    with_adapter = PeftModel.from_pretrained(hf_base, str(tmp_path)).eval()
    with torch.no_grad():
        theirs = with_adapter(tokens).logits.float()
    assert (ours - _logits(base, tokens)[..., :VOCAB]).abs().max() > 1e-2
    assert (theirs - ours).abs().max() < 1e-4
