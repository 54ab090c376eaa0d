"""Import a Hugging Face Llama checkpoint as a model-only checkpoint for continued pretraining.

    python -m pretrain.import_hf hf=path/to/llama output=checkpoints/llama-init
    torchrun --nproc-per-node 8 -m pretrain model=... checkpoint.load=checkpoints/llama-init \
        checkpoint.weights_only=true

The `LlamaForCausalLM` weights are mapped to megatron's layout (the inverse of
`pretrain.hf_mapping.to_llama`), loaded into a TP1/PP1 GPTModel and saved with
dist_checkpointing as `output/iter_0000000/` (+ `latest`), which any TP/PP layout can load
with `checkpoint.weights_only=true`. `meta.json` records the architecture and, when the folder
has a SentencePiece `tokenizer.model`, its sha256 (training data must use that tokenizer).
The model keys to set in the training config are printed (and saved in meta.json's config).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from pretrain import ckpt_async, ckpt_layout, ckpt_meta, ckpt_state, hf_mapping
from pretrain.ckpt_meta import CheckpointError
from pretrain.config import ConfigError, ModelConfig, PretrainConfig

log = logging.getLogger(__name__)


def model_config_from_hf(config: Any) -> ModelConfig:
    """Our ModelConfig for a transformers LlamaConfig (CheckpointError if not representable)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if head_dim * heads != config.hidden_size:
        raise CheckpointError(f"head_dim={head_dim} x heads={heads} != hidden_size: unsupported")
    if bool(getattr(config, "attention_bias", False)) != bool(getattr(config, "mlp_bias", False)):
        raise CheckpointError("attention_bias and mlp_bias differ: unsupported")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"rope_type={rope.get('rope_type')} (RoPE scaling) is unsupported")
    return ModelConfig(
        name="hf-import",
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=heads,
        num_query_groups=config.num_key_value_heads,
        ffn_hidden_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=int(rope.get("rope_theta", getattr(config, "rope_theta", 10000))),
        normalization="RMSNorm",
        activation="swiglu",
        add_bias_linear=bool(getattr(config, "attention_bias", False)),
        share_embeddings_and_output_weights=bool(config.tie_word_embeddings),
        vocab_size=config.vocab_size,
        layernorm_epsilon=config.rms_norm_eps,
    )


def from_llama(hf: dict[str, torch.Tensor], arch: hf_mapping.Arch, padded: int) -> dict:
    """LlamaForCausalLM state dict -> megatron GPTModel (local spec) state dict."""

    def pad(weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(padded, weight.shape[1], dtype=weight.dtype)
        out[: weight.shape[0]] = weight
        return out

    groups, per_group = arch.kv_heads, arch.num_heads // arch.kv_heads
    sd = {"embedding.word_embeddings.weight": pad(hf["model.embed_tokens.weight"])}
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        sd[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        sd[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias") if arch.add_bias_linear else ("weight",):
            q, k, v = (hf[f"{src}self_attn.{n}_proj.{kind}"] for n in ("q", "k", "v"))
            rest = q.shape[1:]
            grouped = torch.cat(
                [
                    q.reshape(groups, per_group, arch.head_dim, *rest),
                    k.reshape(groups, 1, arch.head_dim, *rest),
                    v.reshape(groups, 1, arch.head_dim, *rest),
                ],
                dim=1,
            )
            sd[f"{dst}self_attention.linear_qkv.{kind}"] = grouped.reshape(-1, *rest)
            sd[f"{dst}self_attention.linear_proj.{kind}"] = hf[f"{src}self_attn.o_proj.{kind}"]
            gate, up = hf[f"{src}mlp.gate_proj.{kind}"], hf[f"{src}mlp.up_proj.{kind}"]
            sd[f"{dst}mlp.linear_fc1.{kind}"] = torch.cat([gate, up], dim=0)
            sd[f"{dst}mlp.linear_fc2.{kind}"] = hf[f"{src}mlp.down_proj.{kind}"]
    sd["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    if not arch.tied:
        sd["output_layer.weight"] = pad(hf["lm_head.weight"])
    return {k: v.contiguous() for k, v in sd.items()}


def _meta(cfg: PretrainConfig, hf_dir: Path, layout: dict[str, Any]) -> dict[str, Any]:
    tok = hf_dir / "tokenizer.model"
    tokenizer = {"vocab_size": cfg.model.vocab_size}
    if tok.is_file():
        tokenizer["sha256"] = hashlib.sha256(tok.read_bytes()).hexdigest()
    return {
        "format_version": ckpt_meta.FORMAT_VERSION,
        "step": 0,
        "train_state": {"step": 0, "consumed_samples": 0, "consumed_tokens": 0},
        "layout": layout,
        "arch": ckpt_meta.arch_of(cfg.model, cfg.model.vocab_size),
        "precision": cfg.precision,
        "tokenizer": tokenizer,
        "data": [],
        "config": ckpt_meta.scrub_secrets(dataclasses.asdict(cfg)),
        "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "imported_from": str(hf_dir),
    }


def _read_hf_config(hf_dir: Path, auto_config: Any) -> Any:
    """The folder's transformers config; CheckpointError naming `hf=` when it is not a model."""
    if not (hf_dir / "config.json").is_file():
        what = "does not exist" if not hf_dir.exists() else "has no config.json"
        raise CheckpointError(
            f"hf={hf_dir} {what}: expected a local Hugging Face model folder "
            "(config.json + model.safetensors), e.g. one saved by save_pretrained()"
        )
    try:
        return auto_config.from_pretrained(str(hf_dir))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"hf={hf_dir}: not a transformers model folder: {exc}") from exc


def import_llama(hf_dir: Path, output: Path) -> Path:
    """Convert `hf_dir` (LlamaForCausalLM) into `output/iter_0000000`; returns that path."""
    from megatron.core import dist_checkpointing
    from transformers import AutoConfig, AutoModelForCausalLM

    from pretrain import parallel
    from pretrain.model import build_model

    hf_config = _read_hf_config(hf_dir, AutoConfig)
    if hf_config.model_type != "llama":
        raise CheckpointError(f"{hf_dir}: model_type={hf_config.model_type}; only llama imports")
    cfg = PretrainConfig()
    cfg.model = model_config_from_hf(hf_config)
    cfg.data.paths = []
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    except OSError as exc:  # config.json without weights, or unreadable shards
        raise CheckpointError(f"hf={hf_dir}: cannot load the weights: {exc}") from exc
    parallel.init_distributed(cfg.parallel, seed=cfg.seed)
    vocab = cfg.model.vocab_size
    chunks = build_model(cfg.model, cfg.parallel, vocab, seq_length=cfg.train.seq_length)
    arch = hf_mapping.arch_from_config(dataclasses.asdict(cfg.model), vocab)
    padded = cfg.model.padded_vocab_size(vocab, 1)
    result = chunks[0].load_state_dict(from_llama(hf.state_dict(), arch, padded), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"mapping mismatch: missing {missing}, unexpected {result.unexpected_keys}"
        )
    final = output / ckpt_layout.iter_dir_name(0)
    tmp = output / (final.name + ckpt_layout.TMP_SUFFIX)
    tmp.mkdir(parents=True, exist_ok=False)
    ckpt_async.prepare_dist_checkpointing()
    dist_checkpointing.save(ckpt_state.model_sharded_state_dict(chunks), str(tmp))
    layout = {
        "world_size": 1,
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "data_parallel_size": 1,
    }
    (tmp / ckpt_layout.META_FILE).write_text(json.dumps(_meta(cfg, hf_dir, layout), indent=2))
    os.replace(tmp, final)
    ckpt_layout.write_latest(output, final.name)
    overrides = " ".join(
        f"model.{k}={v}"
        for k, v in dataclasses.asdict(cfg.model).items()
        if v is not None and k != "vocab_size"
    )
    log.info(
        "imported %s -> %s\ntrain with: %s checkpoint.load=%s checkpoint.weights_only=true",
        hf_dir,
        final,
        overrides,
        output,
    )
    return final


_USAGE = (
    "usage: python -m pretrain.import_hf hf=HF_DIR output=OUT_DIR\n"
    "  hf=HF_DIR      local LlamaForCausalLM folder (config.json + model.safetensors)\n"
    "  output=OUT_DIR new folder for the model-only checkpoint (README.md, 'Checkpoints')"
)


def main(argv: list[str] | None = None) -> int:
    """`python -m pretrain.import_hf hf=DIR output=DIR`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(_USAGE)
        return 0
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    from pretrain import parallel

    try:
        if set(args) != {"hf", "output"} or len(args) != len(argv):
            raise ConfigError(_USAGE)
        if Path(args["output"]).exists():
            raise ConfigError(f"output={args['output']} exists; choose a new directory")
        import_llama(Path(args["hf"]), Path(args["output"]))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        parallel.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
