"""HF Llama folder -> import_hf -> checkpoint -> export_hf -> identical tensors (one process).

    python tests/checkpoint/_roundtrip_hf.py HF_DIR WORK_DIR

Prints one JSON line: the number of tensors and how many differ after the round trip.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from pretrain import export_hf, parallel
from pretrain.hf.export import export
from pretrain.hf.importer import import_llama


def main() -> None:
    hf_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    ckpt = import_llama(hf_dir, work / "imported")
    parallel.teardown()
    cfg = export_hf.parse_args(
        [
            f"checkpoint={work / 'imported'}",
            f"output={work / 'again'}",
            "sample_prompt=null",
            f"tokenizer={hf_dir / 'tokenizer.model'}",
        ]
    )
    export(cfg)
    before = load_file(str(hf_dir / "model.safetensors"))
    after = load_file(str(work / "again" / "model.safetensors"))
    differ = [k for k in before if k not in after or not before[k].equal(after[k])]
    print(
        json.dumps(
            {
                "checkpoint": str(ckpt),
                "tensors": len(before),
                "differ": differ,
                "same_keys": sorted(before) == sorted(after),
            }
        )
    )


if __name__ == "__main__":
    main()
    parallel.teardown()
