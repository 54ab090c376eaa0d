"""Export a checkpoint (any TP/PP/DP layout) to a Hugging Face transformers model folder.

The checkpoint is loaded into a single-process TP1/PP1 GPTModel (megatron's dist_checkpointing
reshards on load), mapped to `LlamaForCausalLM` (RMSNorm/SwiGLU/RoPE) or `GPT2LMHeadModel`
(LayerNorm/GELU/learned positions) by `pretrain.hf.mapping`, and written with config.json,
model.safetensors, generation_config.json and the tokenizer: the SentencePiece tokenizer.model
plus a tokenizer.json / tokenizer_config.json (`PreTrainedTokenizerFast`) that encodes and
decodes exactly like it (`pretrain.hf.tokenizer`; the FIM sentinels written in a prompt are
their ids). An objective=mlm checkpoint (meta.json's `config.objective.name`) becomes a
`MegatronBertForMaskedLM` instead (`pretrain.hf.bert`), with a tokenizer that frames the text
in <s> ... </s> and reads `<mask>`; its check after export is the fill-mask pipeline, not a
generated sample. The command is `python -m pretrain.export_hf` (`pretrain/export_hf.py`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import layout, load_model_weights, meta
from pretrain.checkpoint.meta import CheckpointError
from pretrain.config import ConfigError, ModelConfig, ParallelConfig, SampleConfig
from pretrain.hf import bert, mapping, peft_format
from pretrain.hf.tokenizer import (
    control_pieces,
    fim_sentinels,
    mask_piece,
    special_ids,
    write_bert_tokenizer,
    write_tokenizer,
)
from pretrain.model import DTYPES
from pretrain.sample import continuation

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
    sample_prompt: str | None = SampleConfig.prompt
    """After export, load the folder with transformers and log a greedy sample (None = skip).
    objective=mlm checkpoints log the fill-mask pipeline's top 5 for each mask of this prompt
    instead (a prompt without the mask piece is replaced by `def main(<mask>):`)."""
    max_new_tokens: int = 24
    """Length of that sample."""
    adapter_output: str | None = None
    """LoRA checkpoints: also write the adapter alone in Hugging Face PEFT format
    (adapter_config.json + adapter_model.safetensors) to this folder (None = skip). `output`
    always gets the merged model (base + scale * B A)."""
    adapter_base: str | None = None
    """base_model_name_or_path written into adapter_config.json: the export of the base
    checkpoint (`python -m pretrain.export_hf checkpoint=BASE output=...`) or a hub name."""


def check_export_config(cfg: ExportConfig) -> None:
    """ConfigError for values that cannot work (before anything is loaded)."""
    if cfg.dtype not in ("auto", *DTYPES):
        raise ConfigError(f"export_hf: dtype={cfg.dtype!r}: choose auto, fp32, bf16 or fp16")
    for key in ("checkpoint", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"export_hf: {key}=... is required (see --help)")


def load_megatron_model(
    ckpt_dir: Path, merge: bool = True
) -> tuple[dict[str, Any], ModelConfig, torch.nn.Module]:
    """Build a TP1/PP1 GPTModel from meta.json's config and load the checkpoint into it.

    Returns (meta.json, the model's config, the model). Needs torch.distributed (a 1-process
    gloo group is started if none exists). A LoRA checkpoint loads its recorded base (sha256
    checked) and its adapters; with `merge` they are folded into the weights (`merge_lora_`),
    else the model keeps them (base + adapters computed separately).
    """
    from pretrain import parallel
    from pretrain.model import build_model

    saved = meta.read_meta(ckpt_dir)
    if objective_of(saved) == "mlm":
        raise CheckpointError(
            f"{ckpt_dir} is an objective=mlm (BERT) checkpoint: it does not generate text; "
            "export it with `python -m pretrain.export_hf` and use the fill-mask pipeline"
        )
    if objective_of(saved) == "llava":
        raise CheckpointError(
            f"{ckpt_dir} is an objective=llava (image-text) checkpoint: caption images with "
            "`python -m pretrain.caption IMAGE checkpoint=...`; `python -m pretrain.export_hf` "
            "exports its language model"
        )
    model_cfg = meta.model_config_from_meta(saved)
    vocab = saved["arch"]["vocab_size"]
    if not torch.distributed.is_initialized():
        parallel.init_distributed(ParallelConfig(), seed=saved["config"].get("seed", 1234))
    seq_length = saved["config"]["train"]["seq_length"]
    chunks = build_model(model_cfg, ParallelConfig(), vocab, seq_length, saved["precision"])
    if saved.get("peft"):
        from pretrain.checkpoint.weights import load_lora_model_weights
        from pretrain.peft import merge_lora_

        load_lora_model_weights(chunks, ckpt_dir, saved, saved["config"].get("seed", 1234))
        if merge:
            merge_lora_(chunks)
    else:
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


def find_tokenizer(explicit: str | None, ckpt_dir: Path, saved: dict[str, Any]) -> Path:
    """`explicit`, else the checkpoint's tokenizer.model, else the data's (or CheckpointError)."""
    candidates = [Path(explicit)] if explicit else []
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
    adapter_out = Path(cfg.adapter_output).expanduser() if cfg.adapter_output else None
    if adapter_out is not None:
        check_output(adapter_out, cfg.overwrite)
    start = time.perf_counter()
    objective = objective_of(meta.read_meta(ckpt_dir))
    if objective == "mlm":
        return export_bert(cfg, ckpt_dir, out, adapter_out)
    if objective == "llava":  # its language model; the ViT and projector are not exported
        from pretrain.vlm.language_init import load_llava_language_model

        saved, model_cfg, model = load_llava_language_model(ckpt_dir)
    else:
        saved, model_cfg, model = load_megatron_model(ckpt_dir, merge=False)
    dtype = DTYPES[saved["precision"] if cfg.dtype == "auto" else cfg.dtype]
    if cfg.adapter_output and not saved.get("peft"):
        raise ConfigError(
            f"export_hf: adapter_output= needs a LoRA checkpoint; {ckpt_dir} is a full one"
        )
    adapter = peft_format.merge_for_export(saved, model_cfg, model, dtype, cfg, adapter_out)
    tok_path = find_tokenizer(cfg.tokenizer, ckpt_dir, saved)
    special = special_ids(tok_path)
    vocab = saved["arch"]["vocab_size"]
    hf_model, family = build_hf_model(model_cfg, vocab, model, special, dtype)
    info = {
        "source": str(ckpt_dir),
        "step": saved["step"],
        "family": family,
        "dtype": str(dtype),
        "layout": saved["layout"],
    }
    if saved.get("peft"):
        info["peft"] = {**saved["peft"], "merged": True}
    if objective == "llava":
        info["objective"] = "llava"
        info["exported"] = "language_model"

    def write_model(tmp: Path) -> None:
        hf_model.save_pretrained(str(tmp), safe_serialization=True)
        fim = control_pieces(tok_path, fim_sentinels(saved))
        write_tokenizer(tmp, tok_path, special, model_cfg.max_position_embeddings, fim)

    _write_folder(out, write_model, info)
    if adapter_out is not None and adapter is not None:
        _write_folder(adapter_out, adapter, {**info, "peft": saved["peft"], "adapter_only": True})
        log.info("wrote the LoRA adapter (PEFT format) to %s", adapter_out)
    log.info(
        "exported %s (step %d) as %s to %s in %.1fs",
        ckpt_dir,
        saved["step"],
        type(hf_model).__name__,
        out,
        time.perf_counter() - start,
    )
    return out


def objective_of(saved: dict[str, Any]) -> str:
    """The training objective recorded in meta.json (lm for checkpoints older than the key)."""
    return saved.get("config", {}).get("objective", {}).get("name", "lm")


def export_bert(cfg: ExportConfig, ckpt_dir: Path, out: Path, adapter_out: Path | None) -> Path:
    """objective=mlm: the BertModel checkpoint -> a MegatronBertForMaskedLM folder."""
    if adapter_out is not None:
        raise ConfigError("export_hf: adapter_output= needs a LoRA checkpoint of objective=lm")
    start = time.perf_counter()
    saved = meta.read_meta(ckpt_dir)
    tok_path = find_tokenizer(cfg.tokenizer, ckpt_dir, saved)
    special = special_ids(tok_path)
    mask = mask_piece(saved)
    if not control_pieces(tok_path, [mask], user_defined=True):
        raise CheckpointError(
            f"{tok_path} has no control or user-defined piece {mask!r} (objective.mask_token); "
            "pass tokenizer=PATH/tokenizer.model of the data the run trained on"
        )
    model_cfg, model = bert.load_bert(ckpt_dir, saved)
    dtype = DTYPES[saved["precision"] if cfg.dtype == "auto" else cfg.dtype]
    vocab = saved["arch"]["vocab_size"]
    hf_model = bert.build_hf_bert(model_cfg, vocab, megatron_state_dict(model), special, dtype)
    info = {
        "source": str(ckpt_dir),
        "step": saved["step"],
        "family": "megatron-bert",
        "objective": "mlm",
        "dtype": str(dtype),
        "layout": saved["layout"],
    }

    def write_model(tmp: Path) -> None:
        hf_model.save_pretrained(str(tmp), safe_serialization=True)
        write_bert_tokenizer(tmp, tok_path, special, model_cfg.max_position_embeddings, mask)

    _write_folder(out, write_model, info)
    log.info(
        "exported %s (step %d, objective=mlm) as %s to %s in %.1fs",
        ckpt_dir,
        saved["step"],
        type(hf_model).__name__,
        out,
        time.perf_counter() - start,
    )
    return out


def check_generates(out_dir: Path) -> None:
    """CheckpointError for a masked-LM folder (our BERT export): transformers would load it as
    `MegatronBertForCausalLM` and generate text the encoder was never trained to write."""
    config_path = out_dir / "config.json"
    model_type = (
        json.loads(config_path.read_text()).get("model_type") if config_path.is_file() else None
    )
    if model_type == "megatron-bert":
        raise CheckpointError(
            f"{out_dir} is a masked-LM export (objective=mlm, MegatronBertForMaskedLM): it does "
            "not generate text; use transformers' fill-mask pipeline on it"
        )


def check_sample(out_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The post-export check `python -m pretrain.export_hf` logs: a greedy sample of a causal
    LM; for a masked LM (export_info.json family megatron-bert) the fill-mask top 5 per mask."""
    info = json.loads((out_dir / "export_info.json").read_text())
    if info.get("family") != "megatron-bert":
        return sample(out_dir, prompt, max_new_tokens)
    from transformers import AutoTokenizer

    mask = AutoTokenizer.from_pretrained(str(out_dir)).mask_token
    if mask not in prompt:
        prompt = f"def main({mask}):"
    found = bert.fill_mask(out_dir, prompt)
    guesses = [[(p["token_str"], round(p["score"], 3)) for p in per_mask] for per_mask in found]
    return f"fill-mask {prompt!r}: {guesses}"


def _write_folder(out: Path, write: Any, info: dict[str, Any]) -> None:
    """`write(tmp)` + export_info.json into `out` (a temporary name, renamed when complete)."""
    tmp = out.with_name(out.name + ".tmp-incomplete")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)  # an empty folder, or a previous export (see check_output)
    tmp.rename(out)


def sample(
    out_dir: Path,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 1234,
) -> str:
    """`prompt` + its continuation by the exported folder, loaded and run with transformers.

    Greedy for temperature 0, else transformers' sampling (temperature, top_k; 0 = all) seeded
    with `seed`. At most max_position_embeddings tokens in all (the prompt keeps its end). The
    continuation is decoded in context (`continuation`), so no space is lost or added.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_generates(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    ids = ids[:, -(limit - 1) :]
    options: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_k": top_k or None}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max(0, min(max_new_tokens, limit - ids.shape[1])),
            pad_token_id=model.generation_config.pad_token_id,
            **options,
        )
    new = out[0, ids.shape[1] :].tolist()
    log.info("token ids: prompt %s + new %s", ids[0].tolist(), new)
    decode = partial(tokenizer.decode, skip_special_tokens=True)
    return prompt + continuation(decode, ids[0].tolist(), new)
