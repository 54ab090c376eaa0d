"""Export a checkpoint (any TP/PP/DP layout) to a Hugging Face transformers model folder.

The checkpoint is loaded into a single-process TP1/PP1 GPTModel (megatron's dist_checkpointing
reshards on load), mapped to `LlamaForCausalLM` (RMSNorm/SwiGLU/RoPE) or `GPT2LMHeadModel`
(LayerNorm/GELU/learned positions) by `pretrain.hf.mapping`, and written with config.json,
model.safetensors, generation_config.json and the SentencePiece tokenizer (tokenizer.model,
tokenizer_config.json naming `LlamaTokenizer`, and the converted tokenizer.json). The command
is `python -m pretrain.export_hf` (`pretrain/export_hf.py`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import layout, load_model_weights, meta
from pretrain.checkpoint.meta import CheckpointError
from pretrain.config import ConfigError, ModelConfig, ParallelConfig
from pretrain.hf import mapping
from pretrain.model import DTYPES

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    """Options of `python -m pretrain.export_hf`."""

    checkpoint: str = ""
    """Checkpoint directory (iter_XXXXXXX), a run directory or its `latest` file. Required."""
    output: str = ""
    """Folder to write the Hugging Face model to. Required."""
    dtype: str = "auto"
    """Weight dtype in model.safetensors: auto (= the training precision), fp32, bf16 or fp16."""
    tokenizer: str | None = None
    """SentencePiece model to ship (None = the copy saved in the checkpoint, else the data's)."""
    overwrite: bool = False
    """Replace an earlier export in `output` (only a folder holding export_info.json)."""
    sample_prompt: str | None = "def "
    """After export, load the folder with transformers and print a greedy sample (None = skip)."""
    max_new_tokens: int = 24
    """Length of that sample."""


def check_export_config(cfg: ExportConfig) -> None:
    """ConfigError for values that cannot work (before anything is loaded)."""
    if cfg.dtype not in ("auto", *DTYPES):
        raise ConfigError(f"export_hf: dtype={cfg.dtype!r}: choose auto, fp32, bf16 or fp16")
    for key in ("checkpoint", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"export_hf: {key}=... is required (see --help)")


def load_megatron_model(ckpt_dir: Path) -> tuple[dict[str, Any], ModelConfig, torch.nn.Module]:
    """Build a TP1/PP1 GPTModel from meta.json's config and load the checkpoint into it.

    Returns (meta.json, the model's config, the model). Needs torch.distributed (a 1-process
    gloo group is started if none exists).
    """
    from pretrain import parallel
    from pretrain.model import build_model

    saved = meta.read_meta(ckpt_dir)
    model_cfg = meta.model_config_from_meta(saved)
    vocab = saved["arch"]["vocab_size"]
    if not torch.distributed.is_initialized():
        parallel.init_distributed(ParallelConfig(), seed=saved["config"].get("seed", 1234))
    seq_length = saved["config"]["train"]["seq_length"]
    chunks = build_model(model_cfg, ParallelConfig(), vocab, seq_length, saved["precision"])
    load_model_weights(chunks, ckpt_dir)
    chunks[0].eval()
    return saved, model_cfg, chunks[0]


def megatron_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensor entries of a GPTModel's state dict, on the CPU (drops `_extra_state`).

    On GPU the model lives on CUDA; the mapping builds CPU tensors (zero biases), so all
    tensors are moved to the host first.
    """
    sd = model.state_dict()
    return {k: v.detach().cpu() for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _tokenizer_source(cfg: ExportConfig, ckpt_dir: Path, saved: dict[str, Any]) -> Path:
    candidates = [Path(cfg.tokenizer)] if cfg.tokenizer else []
    candidates.append(ckpt_dir / "tokenizer.model")
    paths = saved["config"].get("data", {}).get("paths", [])
    candidates += [Path(p) / "tokenizer.model" for p in paths[:1]]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"no tokenizer.model found (looked at {', '.join(map(str, candidates))}); "
        "pass tokenizer=PATH/tokenizer.model"
    )


def special_ids(tokenizer_model: Path) -> dict[str, Any]:
    """bos/eos/pad/unk ids and pieces of a SentencePiece model (-1 ids become None)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    out: dict[str, Any] = {"vocab_size": sp.get_piece_size()}
    for name, ident in (
        ("bos", sp.bos_id()),
        ("eos", sp.eos_id()),
        ("pad", sp.pad_id()),
        ("unk", sp.unk_id()),
    ):
        out[f"{name}_token_id"] = ident if ident >= 0 else None
        out[f"{name}_token"] = sp.id_to_piece(ident) if ident >= 0 else None
    return out


def write_tokenizer(out_dir: Path, tokenizer_model: Path, special: dict[str, Any], max_len: int):
    """tokenizer.model + tokenizer_config.json (LlamaTokenizer), then transformers' own files."""
    from transformers import AutoTokenizer

    shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": False,  # our data has no BOS: documents are tokens + EOD
        "add_eos_token": False,
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
    }
    for name in ("bos", "eos", "unk", "pad"):
        if special.get(f"{name}_token"):
            tok_cfg[f"{name}_token"] = special[f"{name}_token"]
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    AutoTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))


def build_hf_model(
    model_cfg: ModelConfig,
    vocab: int,
    model: torch.nn.Module,
    special: dict[str, Any],
    dtype: torch.dtype,
) -> tuple[torch.nn.Module, str]:
    """The transformers model holding our weights, and its family (chosen from the config)."""
    from transformers import GenerationConfig, GPT2LMHeadModel, LlamaForCausalLM

    family = mapping.hf_family(model_cfg)
    mapper = mapping.to_llama if family == "llama" else mapping.to_gpt2
    hf_state = mapper(megatron_state_dict(model), model_cfg, vocab)
    state = {k: v.to(dtype) for k, v in hf_state.items()}
    config = mapping.hf_config(model_cfg, vocab, family, special, dtype)
    cls = LlamaForCausalLM if family == "llama" else GPT2LMHeadModel
    hf_model = cls(config).to(dtype)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    tied = model_cfg.share_embeddings_and_output_weights
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"HF mapping mismatch: missing={missing} unexpected={unexpected}")
    if tied:
        hf_model.tie_weights()
    hf_model.generation_config = GenerationConfig(
        bos_token_id=special.get("bos_token_id"),
        eos_token_id=special.get("eos_token_id"),
        pad_token_id=special.get("pad_token_id"),
    )
    return hf_model.eval(), family


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that is a file, or a non-empty folder unless it is a previous export.

    `overwrite=true` replaces only a folder holding an earlier export (`export_info.json`), so
    a mistyped `output=` never deletes unrelated files.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"output={out} is a file; choose a folder path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"output={out} exists and is not empty; pass overwrite=true to replace it"
        )
    if not (out / "export_info.json").is_file():
        raise ConfigError(
            f"output={out} is not empty and holds no earlier export (no export_info.json): "
            "overwrite=true only replaces a folder written by pretrain.export_hf; "
            "choose a new folder or empty this one"
        )


def export(cfg: ExportConfig) -> Path:
    """Run the export; returns the output folder (written under a temporary name, then renamed)."""
    check_export_config(cfg)
    try:
        ckpt_dir = layout.resolve_load_path(Path(cfg.checkpoint), key="checkpoint")
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    out = Path(cfg.output).expanduser()
    check_output(out, cfg.overwrite)
    start = time.perf_counter()
    saved, model_cfg, model = load_megatron_model(ckpt_dir)
    dtype = DTYPES[saved["precision"] if cfg.dtype == "auto" else cfg.dtype]
    tok_path = _tokenizer_source(cfg, ckpt_dir, saved)
    special = special_ids(tok_path)
    vocab = saved["arch"]["vocab_size"]
    hf_model, family = build_hf_model(model_cfg, vocab, model, special, dtype)
    tmp = out.with_name(out.name + ".tmp-incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf_model.save_pretrained(str(tmp), safe_serialization=True)
    write_tokenizer(tmp, tok_path, special, model_cfg.max_position_embeddings)
    info = {
        "source": str(ckpt_dir),
        "step": saved["step"],
        "family": family,
        "dtype": str(dtype),
        "layout": saved["layout"],
    }
    (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)  # an empty folder, or a previous export (see check_output)
    tmp.rename(out)
    log.info(
        "exported %s (step %d) as %s to %s in %.1fs",
        ckpt_dir,
        saved["step"],
        type(hf_model).__name__,
        out,
        time.perf_counter() - start,
    )
    return out


def sample(out_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt` by the exported folder, loaded with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(gen[0], skip_special_tokens=True)
