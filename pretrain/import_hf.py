"""`python -m pretrain.import_hf hf=HF_DIR output=OUT_DIR`: a Hugging Face Llama -> checkpoint.

The result is a model-only checkpoint (`OUT_DIR/iter_0000000` + `latest`) that any TP/PP layout
starts from with `checkpoint.load=OUT_DIR checkpoint.weights_only=true`; the work is done by
`pretrain.hf.importer`. `--help` lists the keys.
"""

from __future__ import annotations

import sys

from pretrain.cli import run_tool
from pretrain.hf.importer import ImportConfig, run_import

SUMMARY = (
    "Import a local Hugging Face LlamaForCausalLM folder as a model-only checkpoint for\n"
    "continued pretraining (the model keys to train it with are printed)."
)
EXAMPLES = (
    "python -m pretrain.import_hf hf=/models/llama-1b output=checkpoints/llama-1b-init",
    "torchrun --nproc-per-node 8 -m pretrain model=llama-1b "
    "checkpoint.load=checkpoints/llama-1b-init checkpoint.weights_only=true",
)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a configuration/checkpoint error)."""

    def body(cfg: ImportConfig) -> int:
        run_import(cfg)
        return 0

    return run_tool("python -m pretrain.import_hf", ImportConfig, body, SUMMARY, EXAMPLES, argv)


if __name__ == "__main__":
    sys.exit(main())
