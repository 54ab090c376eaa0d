"""`python -m pretrain.generate (checkpoint=PATH | hf=DIR) [prompt=TEXT | prompt_file=PATH] ...`.

Text from a checkpoint (any saved TP/PP/DP layout, loaded into one TP1/PP1 model and sampled
by `pretrain.sample`, the end-of-training sampler) or from a Hugging Face folder written by
`pretrain.export_hf` (run with transformers' `generate`). Prints the prompt + continuation to
stdout; logs go to stderr. With suffix=TEXT a model trained with fill-in-the-middle infills:
prefix (the prompt) + middle + suffix is printed (`pretrain.fim.infill`). Greedy with
temperature=0 (then a checkpoint and its export print the same text), else temperature + top-k
sampling seeded by `seed`. `--help` lists every key.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pretrain.cli import parse_key_values, run_tool
from pretrain.config import ConfigError, FimConfig, ParallelConfig, SampleConfig
from pretrain.fim.infill import Infill, middle_text, prompt_ids, report, sentinel_ids

log = logging.getLogger("pretrain")

PROG = "python -m pretrain.generate"

SUMMARY = (
    "Generate text from a checkpoint (iter_XXXXXXX dir, run dir or its `latest`; any layout)\n"
    "or from a Hugging Face export folder. Prints prompt + continuation to stdout."
)
EXAMPLES = (
    "python -m pretrain.generate checkpoint=checkpoints/tiny temperature=0",
    "python -m pretrain.generate hf=checkpoints/tiny/hf prompt=$'import os\\n' max_new_tokens=100",
    "python -m pretrain.generate checkpoint=checkpoints/tiny/latest prompt_file=prompt.py seed=7",
    "python -m pretrain.generate checkpoint=checkpoints/fim prompt=$'def f(x):\\n' "
    "suffix=$'    return y\\n' temperature=0",
)


@dataclasses.dataclass
class GenerateConfig:
    """Options of `python -m pretrain.generate`."""

    checkpoint: str = ""
    """Checkpoint directory (iter_XXXXXXX), a run directory or its `latest` file, any saved
    layout (loaded into one TP1/PP1 model). Give this or hf."""
    hf: str = ""
    """Or a Hugging Face folder written by pretrain.export_hf (loaded with transformers)."""
    prompt: str | None = None
    """Prompt text, taken verbatim (not YAML; in bash $'def f():\\n' has a newline). None = the
    default of sample.prompt, 'def main(args):\\n'. Not with prompt_file."""
    prompt_file: str | None = None
    """Or read the prompt from this UTF-8 file, exactly as it is (a final newline is kept)."""
    max_new_tokens: int = 64
    """Tokens to generate (fewer if EOD comes first or the context is full)."""
    temperature: float = SampleConfig.temperature
    """0 = greedy; otherwise softmax temperature."""
    top_k: int = SampleConfig.top_k
    """With temperature > 0: sample among the k most likely tokens (0 = all)."""
    seed: int = 1234
    """Seed of the sampling."""
    tokenizer: str | None = None
    """With checkpoint: the SentencePiece model (None = the checkpoint's copy, else the data's)."""
    suffix: str | None = None
    """Fill in the middle: the text after the gap (taken verbatim); the prompt is the text before
    it. Needs a model trained with data.fim.rate > 0 and a tokenizer with the FIM sentinels.
    Prints prefix + middle + suffix (the middle is logged on its own). Not with suffix_file."""
    suffix_file: str | None = None
    """Or read the suffix from this UTF-8 file, exactly as it is."""


def check_generate_config(cfg: GenerateConfig) -> None:
    """ConfigError naming the key of a value that cannot work (before anything is loaded)."""
    if bool(cfg.checkpoint) == bool(cfg.hf):
        given = "both" if cfg.checkpoint else "neither"
        raise ConfigError(f"generate: give checkpoint=PATH or hf=DIR ({given} given; see --help)")
    if cfg.prompt is not None and cfg.prompt_file is not None:
        raise ConfigError("generate: give prompt=... or prompt_file=..., not both")
    if cfg.prompt_file is not None and not Path(cfg.prompt_file).is_file():
        raise ConfigError(f"generate: prompt_file={cfg.prompt_file} does not exist")
    if cfg.suffix is not None and cfg.suffix_file is not None:
        raise ConfigError("generate: give suffix=... or suffix_file=..., not both")
    if cfg.suffix_file is not None and not Path(cfg.suffix_file).is_file():
        raise ConfigError(f"generate: suffix_file={cfg.suffix_file} does not exist")
    for key in ("max_new_tokens", "temperature", "top_k"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"generate: {key}={getattr(cfg, key)} must be >= 0")
    if cfg.hf and cfg.tokenizer:
        raise ConfigError("generate: tokenizer=... is for checkpoint=...; hf folders have theirs")
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"generate: tokenizer={cfg.tokenizer} does not exist")
    if cfg.hf and not (Path(cfg.hf) / "config.json").is_file():
        raise ConfigError(
            f"generate: hf={cfg.hf} is not a Hugging Face folder (no config.json); for a "
            "checkpoint use checkpoint=PATH"
        )
    if cfg.checkpoint and (Path(cfg.checkpoint) / "config.json").is_file():
        raise ConfigError(
            f"generate: checkpoint={cfg.checkpoint} is a Hugging Face folder; "
            f"use hf={cfg.checkpoint}"
        )


def read_prompt(cfg: GenerateConfig) -> str:
    """The prompt: prompt_file's text, prompt, or the default of sample.prompt."""
    if cfg.prompt_file is not None:
        return Path(cfg.prompt_file).read_text(encoding="utf-8")
    return SampleConfig.prompt if cfg.prompt is None else cfg.prompt


def read_suffix(cfg: GenerateConfig) -> str | None:
    """The infill suffix: suffix_file's text, suffix, or None (a plain continuation)."""
    if cfg.suffix_file is not None:
        return Path(cfg.suffix_file).read_text(encoding="utf-8")
    return cfg.suffix


def sample_config(cfg: GenerateConfig, prompt: str) -> SampleConfig:
    """The sampler's settings for these options."""
    return SampleConfig(
        prompt=prompt,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
    )


def checkpoint_tokenizer(
    explicit: str | None, ckpt_dir: Path, saved: dict[str, Any]
) -> tuple[Any, Path]:
    """(SentencePiece processor, its path) of a checkpoint: `explicit` (the tokenizer= argument),
    else the checkpoint's or its data's tokenizer.model; CheckpointError when its size is not the
    checkpoint's vocab_size."""
    import sentencepiece as spm

    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.hf.export import find_tokenizer

    tok_path = find_tokenizer(explicit, ckpt_dir, saved)
    processor = spm.SentencePieceProcessor(model_file=str(tok_path))
    vocab = saved["arch"]["vocab_size"]
    if processor.get_piece_size() != vocab:
        raise CheckpointError(
            f"tokenizer={tok_path} has {processor.get_piece_size()} pieces but the checkpoint's "
            f"vocab_size is {vocab}; give the tokenizer.model the model was trained with"
        )
    return processor, tok_path


def from_checkpoint(cfg: GenerateConfig, prompt: str, suffix: str | None = None) -> str:
    """Prompt + continuation by the checkpoint, loaded at TP1/PP1 (starts a 1-process group);
    with `suffix`, prompt + infilled middle + suffix."""

    from pretrain import parallel
    from pretrain.checkpoint import layout
    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.hf.export import load_megatron_model
    from pretrain.sample import continuation, encode_prompt, generate_ids

    try:
        ckpt_dir = layout.resolve_load_path(Path(cfg.checkpoint), key="checkpoint")
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    dist = parallel.init_distributed(ParallelConfig(), seed=cfg.seed)
    saved, _, model = load_megatron_model(ckpt_dir)
    processor, tok_path = checkpoint_tokenizer(cfg.tokenizer, ckpt_dir, saved)
    vocab = processor.get_piece_size()
    log.info("loaded %s (step %d), tokenizer %s", ckpt_dir, saved["step"], tok_path)
    context = saved["config"]["train"]["seq_length"]
    run = partial(
        generate_ids,
        [model],
        cfg=sample_config(cfg, prompt),
        dist=dist,
        context=context,
        vocab_size=vocab,
        eod=processor.eos_id(),
        seed=cfg.seed,
    )
    if suffix is not None:
        fim = saved["config"].get("data", {}).get("fim", {})
        if not fim.get("rate"):
            log.warning("suffix: %s was trained with data.fim.rate=0; it never saw FIM", ckpt_dir)
        pieces = {**FimConfig().tokens(), **_saved_pieces(fim)}
        return _infill(processor, prompt, suffix, pieces, str(tok_path), context, run).text
    ids = encode_prompt(processor, prompt)
    new = run(ids)
    log.info("token ids: prompt %s + new %s", ids, new)
    return prompt + continuation(processor.decode, ids, new)


def _saved_pieces(fim: dict[str, Any]) -> dict[str, str]:
    """role -> sentinel piece from a saved data.fim config (roles it lacks, or whose value the
    checkpoint's secret scrubbing replaced, are left out: the defaults stand in)."""
    from pretrain.checkpoint.meta import REDACTED

    pieces = {role: fim.get(f"{role}_token") for role in FimConfig().tokens()}
    return {role: p for role, p in pieces.items() if isinstance(p, str) and p and p != REDACTED}


def _infill(
    processor: Any,
    prefix: str,
    suffix: str,
    pieces: dict[str, str],
    where: str,
    context: int,
    run: Callable[[list[int]], list[int]],
) -> Infill:
    """prefix + the middle `run` (prompt ids -> new ids) generates + suffix."""
    ids = sentinel_ids(processor, {k: v for k, v in pieces.items() if k != "pad"}, where)
    prompt, prefix_ids = prompt_ids(processor, prefix, suffix, ids, context - 1)
    new = run(prompt)
    log.info("token ids: infill prompt %s + new %s", prompt, new)
    result = Infill(
        prefix, middle_text(processor.decode, prefix_ids, new, processor.eos_id()), suffix
    )
    report(result, new)
    return result


def from_hf(cfg: GenerateConfig, prompt: str, suffix: str | None = None) -> str:
    """Prompt + continuation by the Hugging Face folder, with transformers' generate; with
    `suffix`, prompt + infilled middle + suffix (ids from the folder's tokenizer.model)."""
    from pretrain.hf.export import check_generates, sample

    check_generates(Path(cfg.hf))
    if suffix is None:
        return sample(
            Path(cfg.hf), prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed
        )
    import sentencepiece as spm

    tok_path = Path(cfg.hf) / "tokenizer.model"
    if not tok_path.is_file():
        raise ConfigError(f"generate: hf={cfg.hf} has no tokenizer.model to encode the infill")
    processor = spm.SentencePieceProcessor(model_file=str(tok_path))
    run = partial(_hf_generate, Path(cfg.hf), cfg=cfg, eod=processor.eos_id())
    pieces = FimConfig().tokens()
    return _infill(processor, prompt, suffix, pieces, str(tok_path), 1 << 30, run).text


def _hf_generate(out_dir: Path, ids: list[int], *, cfg: GenerateConfig, eod: int) -> list[int]:
    """New ids after `ids` by the Hugging Face model (greedy or sampled, stops at EOD)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    prompt = torch.tensor([ids[-(limit - 1) :]])
    options: dict[str, Any] = {"do_sample": False}
    if cfg.temperature > 0:
        options = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k or None}
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max(0, min(cfg.max_new_tokens, limit - prompt.shape[1])),
            eos_token_id=eod,
            pad_token_id=model.generation_config.pad_token_id,
            **options,
        )
    return out[0, prompt.shape[1] :].tolist()


def generate_text(cfg: GenerateConfig) -> str:
    """Check `cfg`, then the prompt + its continuation (ConfigError names a bad key)."""
    check_generate_config(cfg)
    prompt, suffix = read_prompt(cfg), read_suffix(cfg)
    start = time.perf_counter()
    if cfg.checkpoint:
        text = from_checkpoint(cfg, prompt, suffix)
    else:
        text = from_hf(cfg, prompt, suffix)
    log.info("generated in %.1fs", time.perf_counter() - start)
    return text


def parse_args(argv: list[str]) -> GenerateConfig:
    """`key=value` arguments -> a checked GenerateConfig (ConfigError names a bad key/value)."""
    cfg = parse_key_values(argv, GenerateConfig, PROG)  # text values are taken verbatim
    check_generate_config(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a configuration/checkpoint error)."""

    def body(cfg: GenerateConfig) -> int:
        text = generate_text(cfg)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return 0

    return run_tool(PROG, GenerateConfig, body, SUMMARY, EXAMPLES, argv)


if __name__ == "__main__":
    sys.exit(main())
