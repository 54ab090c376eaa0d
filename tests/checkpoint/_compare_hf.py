"""Export CHECKPOINT to OUT, then compare logits: our TP1 model vs transformers (one process).

    python tests/checkpoint/_compare_hf.py CHECKPOINT OUT

Prints one JSON line: the transformers class, the max |logit difference| on random tokens,
the logits' scale, and whether the exported tokenizer gives SentencePiece's ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pretrain import export_hf
from pretrain.checkpoint.layout import resolve_load_path
from pretrain.hf.export import export, load_megatron_model, sample

SAMPLES = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.getcwd())\n", "x = [1, 2, 3]"]


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = export_hf.parse_args([f"checkpoint={ckpt}", f"output={out}", "sample_prompt=null"])
    export(cfg)
    meta, _, model = load_megatron_model(resolve_load_path(ckpt))
    vocab, seq = meta["arch"]["vocab_size"], 32
    tokens = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        ours = model(tokens, positions, None)[..., :vocab].float()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(tokens).logits.float()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids_match = all(tok(s)["input_ids"] == sp.encode(s) for s in SAMPLES)
    text = sample(out, "def ", 8)
    print(
        json.dumps(
            {
                "cls": type(hf).__name__,
                "max_abs_diff": float((ours - theirs).abs().max()),
                "scale": float(ours.abs().max()),
                "tokenizer_ids_match": ids_match,
                "sample": text,
                "files": sorted(p.name for p in out.iterdir()),
            }
        )
    )


if __name__ == "__main__":
    main()
    from pretrain import parallel

    parallel.teardown()
