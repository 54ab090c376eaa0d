"""Export a checkpoint (any TP/PP/DP layout) to a Hugging Face transformers model folder.

    python -m pretrain.export_hf checkpoint=checkpoints/tiny output=exported/tiny

`checkpoint` is an `iter_XXXXXXX` directory or a run directory (its `latest` is used). The
checkpoint is loaded into a single-process TP1/PP1 GPTModel (megatron's dist_checkpointing
reshards on load), mapped to `LlamaForCausalLM` (RMSNorm/SwiGLU/RoPE) or `GPT2LMHeadModel`
(LayerNorm/GELU/learned positions) by `pretrain.hf_mapping`, and written with config.json,
model.safetensors, generation_config.json and the SentencePiece tokenizer (tokenizer.model,
tokenizer_config.json naming `LlamaTokenizer`, and the converted tokenizer.json). Options are
in conf/export_hf.yaml and README.md ("Checkpoints").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain import ckpt_async, ckpt_layout, ckpt_meta, ckpt_safety, ckpt_state, hf_mapping
from pretrain.ckpt_meta import CheckpointError
from pretrain.config import ConfigError

log = logging.getLogger(__name__)

USAGE = """usage: python -m pretrain.export_hf checkpoint=PATH output=DIR [key=value ...]

  checkpoint=PATH     iter_XXXXXXX directory, or a run directory (uses its `latest`); required
  output=DIR          folder to write the Hugging Face model to; required
  dtype=auto          auto (the training precision) | fp32 | bf16 | fp16
  tokenizer=PATH      tokenizer.model to ship (default: the copy inside the checkpoint)
  overwrite=false     replace an earlier export in output
  sample_prompt="def "  greedy sample from the exported model afterwards (null = skip)
  max_new_tokens=24   length of that sample

Defaults: conf/export_hf.yaml. Documentation: README.md ("Checkpoints")."""

CONF_FILE = Path(__file__).resolve().parents[1] / "conf" / "export_hf.yaml"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExportConfig:
    checkpoint: str = ""
    """Checkpoint directory (iter_XXXXXXX) or run directory (uses its `latest`). Required."""
    output: str = ""
    """Folder to write the Hugging Face model to. Required."""
    dtype: str = "auto"
    """Weight dtype in model.safetensors: auto (= the training precision), fp32, bf16 or fp16."""
    tokenizer: str | None = None
    """SentencePiece model to ship (None = the copy saved in the checkpoint, else the data's)."""
    overwrite: bool = False
    """Replace an existing output folder."""
    sample_prompt: str | None = "def "
    """After export, load the folder with transformers and print a greedy sample (None = skip)."""
    max_new_tokens: int = 24
    """Length of that sample."""


def parse_args(argv: list[str]) -> ExportConfig:
    """conf/export_hf.yaml, then `key=value` overrides; ConfigError names a bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        base = OmegaConf.structured(ExportConfig)
        if CONF_FILE.is_file():
            base = OmegaConf.merge(base, OmegaConf.load(CONF_FILE))
        bad = [a for a in argv if "=" not in a]
        if bad:
            raise ConfigError(f"arguments must be key=value, got {bad}")
        cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(argv)))
    except OmegaConfBaseException as exc:
        keys = ", ".join(f.name for f in dataclasses.fields(ExportConfig))
        raise ConfigError(f"export_hf: {exc}. Valid keys: {keys}") from exc
    if cfg.dtype not in ("auto", *_DTYPES):
        raise ConfigError(f"export_hf: dtype={cfg.dtype!r}: choose auto, fp32, bf16 or fp16")
    for key in ("checkpoint", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"export_hf: {key}=... is required (see conf/export_hf.yaml)")
    return cfg  # type: ignore[return-value]


def load_megatron_model(ckpt_dir: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """Build a TP1/PP1 GPTModel from meta.json's config and load the checkpoint into it.

    Needs torch.distributed (a 1-process gloo group is started if none exists).
    """
    from megatron.core import dist_checkpointing

    from pretrain import parallel
    from pretrain.config import ModelConfig, ParallelConfig
    from pretrain.model import build_model

    meta = ckpt_meta.read_meta(ckpt_dir)
    config = meta["config"]
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in config["model"].items() if k in known})
    vocab = meta["arch"]["vocab_size"]
    if not torch.distributed.is_initialized():
        parallel.init_distributed(ParallelConfig(), seed=config.get("seed", 1234))
    chunks = build_model(
        model_cfg, ParallelConfig(), vocab, config["train"]["seq_length"], meta["precision"]
    )
    ckpt_safety.check_checkpoint_files(ckpt_dir)
    ckpt_async.prepare_dist_checkpointing()
    request = ckpt_state.model_sharded_state_dict(chunks)
    loaded = dist_checkpointing.load(request, str(ckpt_dir))
    chunks[0].load_state_dict(loaded["model"], strict=True)
    chunks[0].eval()
    return meta, chunks[0]


def megatron_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensor entries of a GPTModel's state dict, on the CPU (drops `_extra_state`).

    On GPU the model lives on CUDA; the mapping builds CPU tensors (zero biases), so all
    tensors are moved to the host first.
    """
    sd = model.state_dict()
    return {k: v.detach().cpu() for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _tokenizer_source(cfg: ExportConfig, ckpt_dir: Path, meta: dict[str, Any]) -> Path:
    candidates = [Path(cfg.tokenizer)] if cfg.tokenizer else []
    candidates.append(ckpt_dir / "tokenizer.model")
    paths = meta["config"].get("data", {}).get("paths", [])
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


def build_hf_model(meta: dict[str, Any], model: torch.nn.Module, special: dict, dtype: Any):
    """The transformers model holding our weights (family chosen from the config)."""
    from transformers import GenerationConfig, GPT2LMHeadModel, LlamaForCausalLM

    vocab = meta["arch"]["vocab_size"]
    arch = hf_mapping.arch_from_config(meta["config"]["model"], vocab)
    family = arch.family()
    mapper = hf_mapping.to_llama if family == "llama" else hf_mapping.to_gpt2
    state = {k: v.to(dtype) for k, v in mapper(megatron_state_dict(model), arch).items()}
    config = hf_mapping.hf_config(arch, family, special, dtype)
    cls = LlamaForCausalLM if family == "llama" else GPT2LMHeadModel
    hf_model = cls(config).to(dtype)
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (arch.tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"HF mapping mismatch: missing={missing} unexpected={unexpected}")
    if arch.tied:
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
    try:
        ckpt_dir = ckpt_layout.resolve_load_path(Path(cfg.checkpoint), key="checkpoint")
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    out = Path(cfg.output).expanduser()
    check_output(out, cfg.overwrite)
    start = time.perf_counter()
    meta, model = load_megatron_model(ckpt_dir)
    dtype = _DTYPES[meta["precision"] if cfg.dtype == "auto" else cfg.dtype]
    tok_path = _tokenizer_source(cfg, ckpt_dir, meta)
    special = special_ids(tok_path)
    hf_model, family = build_hf_model(meta, model, special, dtype)
    tmp = out.with_name(out.name + ".tmp-incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    hf_model.save_pretrained(str(tmp), safe_serialization=True)
    max_len = meta["config"]["model"]["max_position_embeddings"]
    write_tokenizer(tmp, tok_path, special, max_len)
    info = {
        "source": str(ckpt_dir),
        "step": meta["step"],
        "family": family,
        "dtype": str(dtype),
        "layout": meta["layout"],
    }
    (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)  # an empty folder, or a previous export (see check_output)
    tmp.rename(out)
    log.info(
        "exported %s (step %d) as %s to %s in %.1fs",
        ckpt_dir,
        meta["step"],
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m pretrain.export_hf`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        cfg = parse_args(argv)
        out = export(cfg)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        from pretrain import parallel

        parallel.teardown()
    if cfg.sample_prompt:
        text = sample(out, cfg.sample_prompt, cfg.max_new_tokens)
        log.info("sample from the exported model: %r", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
