"""Config composition (every group option) and validation errors (each names its key)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pretrain.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ParallelConfig,
    PretrainConfig,
    TrainConfig,
)
from pretrain.validate import validate
from tests._dist import REPO_ROOT, run_pretrain

CONF = REPO_ROOT / "conf"


def _compose(overrides: list[str]) -> PretrainConfig:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pretrain.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=overrides)
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(
    "group", ["model", "parallel", "data", "optim", "train", "logging", "checkpoint"]
)
def test_every_group_option_composes(group):
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options, group
    for option in options:
        cfg = _compose([f"{group}={option}"])
        assert isinstance(cfg, PretrainConfig)
        if group == "model":
            assert cfg.model.name == option
            assert cfg.run.dir == f"checkpoints/{option}"


def test_presets_have_the_published_shapes():
    llama8 = _compose(["model=llama-8b"]).model
    assert (llama8.num_layers, llama8.hidden_size, llama8.kv_heads(), llama8.ffn_size()) == (
        32,
        4096,
        8,
        14336,
    )
    assert llama8.activation == "swiglu" and llama8.normalization == "RMSNorm"
    assert not llama8.share_embeddings_and_output_weights
    from pretrain.model import count_parameters

    gpt2 = _compose(["model=gpt2-125m"]).model
    # GPT-2 small with its 50257-token vocab padded to 50304: 124.4M parameters
    assert abs(count_parameters(gpt2, 50304) - 124.4e6) < 0.2e6
    assert abs(count_parameters(llama8, 128256) - 8.03e9) < 0.02e9


def test_vocab_padding_is_divisible_by_tp():
    model = ModelConfig(make_vocab_size_divisible_by=128)
    assert model.padded_vocab_size(512, 1) == 512
    assert model.padded_vocab_size(513, 1) == 640
    assert model.padded_vocab_size(50257, 2) == 50432
    assert model.padded_vocab_size(50257, 2) % 256 == 0


def _cfg(data_dir: Path, **parts) -> PretrainConfig:
    cfg = PretrainConfig(data=DataConfig(paths=[str(data_dir)], split="90,10,0"))
    return replace(cfg, **parts)


ERRORS = [
    (
        {"parallel": ParallelConfig(tensor_model_parallel_size=3)},
        3,
        "model.num_attention_heads=4 must be divisible by parallel.tensor_model_parallel_size=3",
    ),
    (
        {
            "model": ModelConfig(num_attention_heads=4, num_query_groups=1),
            "parallel": ParallelConfig(tensor_model_parallel_size=2),
        },
        2,
        "model.num_query_groups=1 (key/value heads) must be divisible by "
        "parallel.tensor_model_parallel_size=2",
    ),
    (
        {
            "model": ModelConfig(num_layers=3),
            "parallel": ParallelConfig(pipeline_model_parallel_size=2),
        },
        2,
        "model.num_layers=3 must be divisible by parallel.pipeline_model_parallel_size=2 x "
        "parallel.virtual_pipeline_model_parallel_size=1",
    ),
    (
        {
            "model": ModelConfig(num_layers=4),
            "parallel": ParallelConfig(
                pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=4
            ),
        },
        2,
        "model.num_layers=4 must be divisible by parallel.pipeline_model_parallel_size=2 x "
        "parallel.virtual_pipeline_model_parallel_size=4 = 8",
    ),
    (
        {"train": TrainConfig(micro_batch_size=3, global_batch_size=8)},
        2,
        "train.global_batch_size=8 must be divisible by train.micro_batch_size=3 x "
        "data-parallel size 2",
    ),
    (
        {"parallel": ParallelConfig(pipeline_model_parallel_size=2)},
        3,
        "world size 3 (torchrun --nproc-per-node x nodes) is not divisible",
    ),
    (
        {"parallel": ParallelConfig(tensor_model_parallel_size=2)},
        3,
        "is not divisible by parallel.tensor_model_parallel_size=2",
    ),
    (
        {"train": TrainConfig(seq_length=512)},
        1,
        "train.seq_length=512 exceeds model.max_position_embeddings=256",
    ),
    (
        {"parallel": ParallelConfig(sequence_parallel=True)},
        1,
        "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1",
    ),
    (
        {"model": ModelConfig(vocab_size=32000)},
        1,
        "model.vocab_size=32000 does not match the tokenizer",
    ),
    ({"precision": "fp8"}, 1, "precision='fp8' is not one of fp32, bf16, fp16"),
    (
        {"optim": OptimConfig(loss_scale=1024.0)},
        1,
        "optim.loss_scale=1024.0 applies only to precision=fp16",
    ),
    ({"optim": OptimConfig(lr=1e-4, min_lr=1e-3)}, 1, "optim.min_lr=0.001 must be in [0, optim.lr"),
    ({"model": ModelConfig(activation="relu")}, 1, "model.activation='relu' is not one of"),
    (
        {
            "objective": ObjectiveConfig(name="mlm"),
            "model": ModelConfig(position_embedding_type="rope", rotary_base=500000),
        },
        1,
        "model.rotary_base=500000: megatron-core's BertModel fixes the rotary base",
    ),
    (
        {
            "parallel": ParallelConfig(
                pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2
            ),
            "model": ModelConfig(num_layers=4),
            "train": TrainConfig(micro_batch_size=4, global_batch_size=4),
        },
        2,
        "needs the micro-batch count 1",
    ),
]


@pytest.mark.parametrize("parts,world,message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_validation_errors_name_the_key(prepared_data, parts, world, message):
    with pytest.raises(ConfigError) as info:
        validate(_cfg(prepared_data, **parts), world_size=world)
    assert message in str(info.value)


def test_valid_config_passes_and_returns_manifests(prepared_data):
    manifests = validate(_cfg(prepared_data), world_size=2)
    assert manifests[0]["tokenizer"]["vocab_size"] == 512
    assert len(manifests[0]["sha256"]) == 64


def test_data_directory_errors(prepared_data, tmp_path):
    with pytest.raises(ConfigError, match=r"data.paths\[0\]=.*no manifest.json"):
        validate(_cfg(tmp_path / "missing"), world_size=1)
    other = tmp_path / "other"
    shutil.copytree(prepared_data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg = replace(_cfg(prepared_data), data=DataConfig(paths=[str(prepared_data), str(other)]))
    with pytest.raises(ConfigError, match=r"data.paths\[1\]=.* different tokenizer"):
        validate(cfg, world_size=1)


@pytest.mark.distributed
def test_config_error_exits_2_cleanly_on_every_rank(prepared_data, tmp_path):
    run = run_pretrain(
        2,
        [f"data.paths=[{prepared_data}]", "parallel.tensor_model_parallel_size=3"],
        tmp_path / "bad",
        check=False,
        timeout=120,
    )
    assert run.returncode != 0
    line = "pretrain: config error: world size 2 (torchrun --nproc-per-node x nodes)"
    assert run.stderr.count(line) == 2  # both ranks, no hang
    # no worker traceback (torchrun itself reports the failed children with one of its own)
    assert "pretrain/validate.py" not in run.stderr and run.stderr.count("Traceback") <= 1


RANGE_ERRORS = [
    ({"model": ModelConfig(num_query_groups=0)}, "model.num_query_groups=0 must be >= 1"),
    ({"model": ModelConfig(ffn_hidden_size=0)}, "model.ffn_hidden_size=0 must be >= 1"),
    ({"model": ModelConfig(hidden_dropout=1.5)}, "model.hidden_dropout=1.5 must be in [0, 1)"),
    ({"model": ModelConfig(init_method_std=-1.0)}, "model.init_method_std=-1.0 must be > 0"),
    ({"model": ModelConfig(layernorm_epsilon=0.0)}, "model.layernorm_epsilon=0.0 must be > 0"),
    ({"optim": OptimConfig(decay_steps=-5)}, "optim.decay_steps=-5 must be >= 1"),
    ({"optim": OptimConfig(adam_beta1=1.5)}, "optim.adam_beta1=1.5 must be in [0, 1)"),
    ({"train": TrainConfig(max_tokens=-5)}, "train.max_tokens=-5 must be >= 1"),
    ({"train": TrainConfig(stop_at_step=0)}, "train.stop_at_step=0 must be >= 1"),
    (
        {"precision": "fp16", "optim": OptimConfig(loss_scale_window=0)},
        "optim.loss_scale_window=0 must be >= 1",
    ),
    (
        {"parallel": ParallelConfig(overlap_param_gather=True)},
        "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true",
    ),
    ({"data": DataConfig(split="inf,1,1")}, "data.split='inf,1,1' must be three non-negative"),
]


@pytest.mark.parametrize("parts,message", RANGE_ERRORS, ids=[e[1][:40] for e in RANGE_ERRORS])
def test_out_of_range_values_are_refused(prepared_data, parts, message):
    cfg = _cfg(prepared_data, **parts)
    if "data" in parts:
        cfg = replace(cfg, data=replace(parts["data"], paths=[str(prepared_data)]))
    with pytest.raises(ConfigError) as info:
        validate(cfg, world_size=1)
    assert message in str(info.value)


def test_split_error_shows_the_quoted_override(prepared_data):
    cfg = replace(_cfg(prepared_data), data=DataConfig(paths=[str(prepared_data)], split="98/2"))
    with pytest.raises(ConfigError) as info:
        validate(cfg, world_size=1)
    assert "\"data.split='98,1,1'\"" in str(info.value)


def test_token_budget_sets_the_step_count(prepared_data):
    train = TrainConfig(max_steps=0, max_tokens=3000, global_batch_size=8, seq_length=64)
    validate(_cfg(prepared_data, train=train), world_size=1)
    assert train.steps_for(8 * 64) == 6  # ceil(3000 / 512)


def test_incomplete_data_dir_names_the_prepare_command(prepared_data, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(prepared_data, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(ConfigError) as info:
        validate(_cfg(partial), world_size=1)
    assert f"python -m data_pipeline output.dir={partial}" in str(info.value)
