"""vision.language_checkpoint: start a LLaVA run's language model from a text GPT checkpoint.

The checkpoint is one of ours (a run dir, whose `latest` complete checkpoint is taken, or an
iter_XXXXXXX dir: `layout.resolve_load_path`), written by an objective=lm or sft run (or
`pretrain.import_hf`). Before any tensor is read its meta.json is checked against this run:
the model shape (`meta.ARCH_KEYS`, the vocabulary size) and the tokenizer must be the same,
else a `CheckpointError` (exit 2) names vision.language_checkpoint and lists every differing
key. Its files are then verified (`verify.inspect`: completeness, checksums, nothing that runs
code, finite values) and megatron's dist_checkpointing reads the GPT's model tensors into each
LLaVA chunk's `.language_model` through that GPTModel's own sharded state dict, so the text
run's TP/PP layout and this run's may differ (resharding on load, as for every load of ours).
The ViT and the projector keep their initialisation. Collective: every rank calls it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pretrain.checkpoint import layout, load_model_weights, meta
from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.state import unwrap
from pretrain.config import PretrainConfig

if TYPE_CHECKING:
    from pretrain.parallel import DistInfo

log = logging.getLogger("pretrain")

KEY = "vision.language_checkpoint"
"""The config key every error names."""

TEXT_OBJECTIVES = ("lm", "sft")
"""Objectives whose checkpoints hold a plain GPTModel (the LLaVA language model's modules)."""


def resolve(checkpoint_dir: str | Path) -> Path:
    """The complete checkpoint `checkpoint_dir` names (CheckpointError naming the key)."""
    try:
        return layout.resolve_load_path(Path(checkpoint_dir), key=KEY)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc


def _run_manifests(cfg: PretrainConfig) -> list[dict[str, Any]]:
    from pretrain.data_checks import read_manifest

    return [read_manifest(p, i) for i, p in enumerate(cfg.data.paths)]


def problems(
    saved: dict[str, Any], cfg: PretrainConfig, manifests: list[dict[str, Any]]
) -> list[str]:
    """Why a checkpoint's meta.json cannot initialise this run's language model ([] = it can)."""
    objective = saved.get("config", {}).get("objective", {}).get("name", "lm")
    if objective not in TEXT_OBJECTIVES:
        what = "a BERT encoder" if objective == "mlm" else "an image-text model"
        hint = (
            "; continue an image-text run with checkpoint.load=... checkpoint.weights_only=true"
            if objective == "llava"
            else ""
        )
        return [f"it is an objective={objective} checkpoint ({what}), not a text GPT{hint}"]
    if saved.get("peft"):
        return [
            "it is a LoRA checkpoint (adapters only): merge it first (`python -m "
            "pretrain.export_hf` then `python -m pretrain.import_hf`)"
        ]
    found = []
    vocab = meta.tokenizer_vocab(cfg, manifests)
    saved_arch = saved.get("arch", {})
    for key, now in meta.arch_of(cfg.model, vocab).items():
        if key in saved_arch and saved_arch[key] != now:
            name = "the tokenizer's vocab_size" if key == "vocab_size" else f"model.{key}"
            found.append(f"{name}: checkpoint has {saved_arch[key]!r}, this run has {now!r}")
    old = saved.get("tokenizer", {}).get("sha256")
    new = meta.tokenizer_of(manifests).get("sha256")
    if old and new and old != new:
        found.append(
            f"tokenizer: the checkpoint was trained with tokenizer sha256 {old[:12]}..., "
            f"data.paths have {new[:12]}... (prepare the image-text data with the text run's "
            "tokenizer: tokenizer=pretrained tokenizer.model=<text data>/tokenizer.model)"
        )
    return found


def check(
    saved: dict[str, Any], ckpt_dir: Path, cfg: PretrainConfig, manifests: list[dict[str, Any]]
) -> None:
    """CheckpointError naming vision.language_checkpoint and every problem (see `problems`)."""
    found = problems(saved, cfg, manifests)
    if found:
        raise CheckpointError(
            f"{KEY}={ckpt_dir} cannot initialise the language model:\n  - "
            + "\n  - ".join(found)
            + "\nSet model.* to the text run's model (and use its tokenizer), or choose "
            f"another checkpoint, or {KEY}=null for a randomly initialised language model."
        )


def language_models(chunks: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """The GPTModel inside each LLaVA chunk (DDP/Float16 wrappers removed; chunks without a
    decoder are skipped)."""
    found = [getattr(unwrap(c), "language_model", None) for c in chunks]
    return [m for m in found if m is not None]


def load_language_weights(
    chunks: list[torch.nn.Module],
    checkpoint_dir: str | Path,
    cfg: PretrainConfig,
    dist: DistInfo,
    manifests: list[dict[str, Any]] | None = None,
) -> None:
    """Fill each chunk's `.language_model` from a text GPT checkpoint (see the module
    docstring). `manifests`: the run's parsed data manifests (None = read data.paths')."""
    ckpt_dir = resolve(checkpoint_dir)
    saved = meta.read_meta(ckpt_dir)
    check(saved, ckpt_dir, cfg, _run_manifests(cfg) if manifests is None else manifests)
    lms = language_models(chunks)
    if not lms:
        raise CheckpointError(f"{KEY}: this rank's LLaVA chunks have no language model")
    load_model_weights(lms, ckpt_dir, verify_checksums=cfg.checkpoint.verify_checksums)
    if dist.is_rank0:
        log.info(
            "language model initialised from %s (step %d, objective=%s, saved at %s)",
            ckpt_dir,
            saved["step"],
            saved["config"].get("objective", {}).get("name", "lm"),
            _layout(saved.get("layout", {})),
        )


def _layout(lay: dict[str, Any]) -> str:
    return (
        f"TP{lay.get('tensor_model_parallel_size')}xPP{lay.get('pipeline_model_parallel_size')}"
        f"xDP{lay.get('data_parallel_size')}"
    )


LANGUAGE_PREFIX = "language_model."
"""Prefix of the language model's tensors in an objective=llava checkpoint."""


def load_llava_language_model(ckpt_dir: Path) -> tuple[dict[str, Any], Any, torch.nn.Module]:
    """The reverse direction, for `pretrain.export_hf`: the `language_model.` tensors of an
    objective=llava checkpoint (any layout) loaded into a TP1/PP1 GPTModel built from its
    model config; returns (meta.json, its ModelConfig, the GPTModel in eval mode). Starts a
    1-process group if none runs. The ViT and the projector are not read: they stay in the
    megatron checkpoint (the full image-text model, `python -m pretrain.caption`).
    """
    from pretrain import parallel
    from pretrain.checkpoint import verify
    from pretrain.checkpoint.async_save import prepare_dist_checkpointing
    from pretrain.checkpoint.state import _drop_empty_objects, _sd_metadata
    from pretrain.config import ParallelConfig
    from pretrain.model import build_model

    saved = meta.read_meta(ckpt_dir)
    if not torch.distributed.is_initialized():
        parallel.init_distributed(ParallelConfig(), seed=saved["config"].get("seed", 1234))
    log.info(
        "%s is an objective=llava checkpoint: exporting its language model (a text GPT); the "
        "ViT and the projector stay in the megatron checkpoint (the full image-text model: "
        "python -m pretrain.caption)",
        ckpt_dir,
    )
    model_cfg = meta.model_config_from_meta(saved)
    seq_length = saved["config"]["train"]["seq_length"]
    vocab = saved["arch"]["vocab_size"]
    (model,) = build_model(model_cfg, ParallelConfig(), vocab, seq_length, saved["precision"])
    verify.inspect(ckpt_dir)
    prepare_dist_checkpointing()
    request = model.sharded_state_dict(prefix=LANGUAGE_PREFIX, metadata=_sd_metadata())
    loaded = verify.read_tensors({"model": _drop_empty_objects(request)}, ckpt_dir)["model"]
    model.load_state_dict({k[len(LANGUAGE_PREFIX) :]: v for k, v in loaded.items()}, strict=True)
    return saved, model_cfg, model.eval()
