"""Export a LoRA checkpoint and its base, then compare logits (one process, fp32).

    python tests/peft/_compare_peft.py LORA_CKPT BASE_CKPT OUT

Prints one JSON line: max |logit difference| of the merged HF export and of the PEFT adapter
loaded with `peft` onto the exported base, each against our TP1 model with the adapters kept
separate (base + s B A x), and how much the adapters change the logits at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pretrain import export_hf
from pretrain.hf.export import export, load_megatron_model


def main() -> None:
    ckpt, base, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    base_hf, merged_hf, adapter = out / "base_hf", out / "merged_hf", out / "adapter"
    export(export_hf.parse_args([f"checkpoint={base}", f"output={base_hf}", "sample_prompt=null"]))
    export(
        export_hf.parse_args(
            [
                f"checkpoint={ckpt}",
                f"output={merged_hf}",
                f"adapter_output={adapter}",
                f"adapter_base={base_hf}",
                "sample_prompt=null",
            ]
        )
    )
    saved, _, model = load_megatron_model(ckpt, merge=False)
    _, _, base_model = load_megatron_model(base)
    vocab, seq = saved["arch"]["vocab_size"], 32
    tokens = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        ours = model(tokens, positions, None)[..., :vocab].float()
        base_logits = base_model(tokens, positions, None)[..., :vocab].float()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def hf_logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(tokens).logits.float()

    merged = AutoModelForCausalLM.from_pretrained(str(merged_hf), dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(str(base_hf), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(plain, str(adapter))
    print(
        json.dumps(
            {
                "merged_vs_ours": float((hf_logits(merged) - ours).abs().max()),
                "peft_vs_ours": float((hf_logits(with_adapter) - ours).abs().max()),
                "adapter_effect": float((ours - base_logits).abs().max()),
                "scale": float(ours.abs().max()),
                "adapter_files": sorted(p.name for p in adapter.iterdir()),
            }
        )
    )


if __name__ == "__main__":
    main()
