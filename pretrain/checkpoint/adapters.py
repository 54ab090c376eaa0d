"""LoRA checkpoints: only the adapters, plus a reference (path + sha256) to the base checkpoint.

A LoRA run's checkpoint is a normal sharded checkpoint whose model part holds only the
`lora_A` / `lora_B` tensors (with the optimizer state of the adapters, scheduler, train state and
RNG as usual), and whose meta.json has

```
"peft": {"type": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0,
         "target_modules": [...], "base": {"path": "/abs/base/iter_0000100", "sha256": "..."}}
```

The base's sha256 is the sha256 of its checksums.json (which lists the sha256 and size of every
file of the base checkpoint, so it changes whenever any byte of it does, and hashing it costs
nothing); a base without checksums.json (saved by older code) is identified by its meta.json.
Loading a LoRA checkpoint loads the recorded base first, after checking that the path still
exists and its sha256 is unchanged (CheckpointError naming the path otherwise).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pretrain.checkpoint import layout
from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.verify import CHECKSUMS_FILE
from pretrain.config import PeftConfig

_MUST_MATCH = ("type", "rank", "alpha", "target_modules")


def base_fingerprint(ckpt_dir: Path) -> str:
    """sha256 of the base checkpoint's checksums.json (meta.json for older checkpoints)."""
    path = ckpt_dir / CHECKSUMS_FILE
    if not path.is_file():
        path = ckpt_dir / layout.META_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} to identify the LoRA base: {exc}") from exc


def base_record(ckpt_dir: Path) -> dict[str, str]:
    """{path (absolute), sha256} of a base checkpoint directory."""
    return {"path": str(ckpt_dir.resolve()), "sha256": base_fingerprint(ckpt_dir)}


def peft_record(peft: PeftConfig, base: dict[str, str] | None) -> dict[str, Any]:
    """meta.json's `peft` entry of a LoRA checkpoint."""
    return {
        "type": peft.type,
        "rank": peft.rank,
        "alpha": peft.alpha,
        "dropout": peft.dropout,
        "target_modules": list(peft.target_modules),
        "base": base,
    }


def peft_config_of(saved: dict[str, Any]) -> PeftConfig:
    """The PeftConfig a LoRA checkpoint was trained with (from its meta.json `peft`)."""
    return PeftConfig(
        type=saved["type"],
        rank=int(saved["rank"]),
        alpha=float(saved["alpha"]),
        dropout=float(saved.get("dropout", 0.0)),
        target_modules=list(saved["target_modules"]),
    )


def check_base(saved: dict[str, Any], ckpt_dir: Path) -> Path:
    """The base checkpoint a LoRA checkpoint names, after checking it is unchanged."""
    base = saved.get("base") or {}
    if not base.get("path"):
        raise CheckpointError(f"{ckpt_dir}: meta.json peft.base names no base checkpoint")
    path = Path(base["path"])
    if not layout.is_complete(path):
        raise CheckpointError(
            f"LoRA checkpoint {ckpt_dir} needs its base checkpoint {path}, which is gone or "
            "incomplete: restore it there (the adapters only make sense on that base)"
        )
    now = base_fingerprint(path)
    if now != base.get("sha256"):
        raise CheckpointError(
            f"LoRA checkpoint {ckpt_dir}: its base {path} changed (sha256 of "
            f"{CHECKSUMS_FILE} {str(base.get('sha256'))[:12]}... when trained, now "
            f"{now[:12]}...): the adapters were trained on other weights; restore that base"
        )
    return path


def check_same_adapters(saved: dict[str, Any], peft: PeftConfig, ckpt_dir: Path) -> None:
    """CheckpointError when this run's peft.* cannot take the checkpoint's adapters."""
    now = peft_record(peft, None)
    problems = [
        f"peft.{key}: checkpoint has {saved.get(key)!r}, this run has {now[key]!r}"
        for key in _MUST_MATCH
        if saved.get(key) != now[key]
    ]
    if problems:
        raise CheckpointError(
            f"LoRA checkpoint {ckpt_dir} does not match this run:\n  - " + "\n  - ".join(problems)
        )
