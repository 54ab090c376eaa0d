"""`python -m pretrain.export_hf checkpoint=PATH output=DIR [key=value ...]`.

Any checkpoint (any TP/PP/DP layout) -> a Hugging Face transformers folder; the work is done
by `pretrain.hf.export`. `--help` lists every key with its description.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pretrain.cli import parse_key_values, run_tool
from pretrain.hf.export import ExportConfig, check_export_config, check_sample, export

log = logging.getLogger("pretrain")

PROG = "python -m pretrain.export_hf"

SUMMARY = (
    "Export a checkpoint (iter_XXXXXXX dir, run dir or its `latest`; any TP/PP/DP layout) to a\n"
    "Hugging Face folder: LlamaForCausalLM or GPT2LMHeadModel (objective=mlm checkpoints:\n"
    "MegatronBertForMaskedLM) + the SentencePiece tokenizer."
)
EXAMPLES = (
    "python -m pretrain.export_hf checkpoint=checkpoints/tiny output=exported/tiny",
    "python -m pretrain.export_hf checkpoint=checkpoints/tiny/iter_0000200 output=hf dtype=bf16",
)


def parse_args(argv: list[str]) -> ExportConfig:
    """`key=value` arguments -> a checked ExportConfig (ConfigError names a bad key/value)."""
    cfg = parse_key_values(argv, ExportConfig, PROG)
    check_export_config(cfg)
    return cfg


def _export(cfg: ExportConfig) -> int:
    out = export(cfg)
    if cfg.sample_prompt:
        text = check_sample(Path(out), cfg.sample_prompt, cfg.max_new_tokens)
        log.info("sample from the exported model: %r", text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a configuration/checkpoint error)."""
    return run_tool(PROG, ExportConfig, _export, SUMMARY, EXAMPLES, argv)


if __name__ == "__main__":
    sys.exit(main())
