"""Import a Hugging Face Llama checkpoint as a model-only checkpoint for continued pretraining.

The command is `python -m pretrain.import_hf` (`pretrain/import_hf.py`). The `LlamaForCausalLM`
weights are mapped to megatron's layout (`pretrain.hf.mapping.from_llama`), loaded into a
TP1/PP1 GPTModel and saved with dist_checkpointing as `output/iter_0000000/` (+ `latest`),
which any TP/PP layout can load with `checkpoint.weights_only=true`. `meta.json` records the
architecture and, when the folder has a SentencePiece `tokenizer.model`, its sha256 (training
data must use that tokenizer). The model keys to set in the training config are printed (and
saved in meta.json's config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import meta, save_model_weights
from pretrain.checkpoint.meta import CheckpointError
from pretrain.config import PretrainConfig
from pretrain.hf.mapping import from_llama, model_config_from_hf
from pretrain.state import TrainState

log = logging.getLogger(__name__)


@dataclass
class ImportConfig:
    """Options of `python -m pretrain.import_hf`."""

    hf: str = ""
    """Local LlamaForCausalLM folder (config.json + model.safetensors). Required."""
    output: str = ""
    """New folder for the model-only checkpoint (iter_0000000 + latest). Required."""


def _meta(cfg: PretrainConfig, hf_dir: Path) -> dict[str, Any]:
    tok = hf_dir / "tokenizer.model"
    tokenizer: dict[str, Any] = {"vocab_size": cfg.model.vocab_size}
    if tok.is_file():
        tokenizer["sha256"] = hashlib.sha256(tok.read_bytes()).hexdigest()
    return meta.build_meta(
        cfg,
        train_state=TrainState(),
        layout=meta.SINGLE_PROCESS_LAYOUT,
        tokenizer=tokenizer,
        data=[],
        vocab_size=cfg.model.vocab_size,
        imported_from=str(hf_dir),
    )


def read_hf_config(hf_dir: Path, auto_config: Any) -> Any:
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
    from transformers import AutoConfig, AutoModelForCausalLM

    from pretrain import parallel
    from pretrain.model import build_model

    hf_config = read_hf_config(hf_dir, AutoConfig)
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
    padded = cfg.model.padded_vocab_size(vocab, 1)
    result = chunks[0].load_state_dict(from_llama(hf.state_dict(), cfg.model, padded), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"mapping mismatch: missing {missing}, unexpected {result.unexpected_keys}"
        )
    final = save_model_weights(chunks, output, _meta(cfg, hf_dir))
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


def run_import(cfg: ImportConfig) -> Path:
    """Check the options, then import (ConfigError when output exists or a key is missing)."""
    from pretrain.config import ConfigError

    for key in ("hf", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"import_hf: {key}=... is required (see --help)")
    if Path(cfg.output).exists():
        raise ConfigError(f"output={cfg.output} exists; choose a new directory")
    return import_llama(Path(cfg.hf), Path(cfg.output))
