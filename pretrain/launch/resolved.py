"""The resolved-config file: a composed, validated config that travels to the trainers.

YAML with three keys: `format` (RESOLVED_FORMAT), `overrides` (the command line that gave it,
for the run's `.hydra/overrides.yaml`) and `config` (every key, interpolations resolved).
Written atomically: a temporary name in the same folder, then a rename.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError

RESOLVED_FORMAT = "pretrain-resolved-config/1"
CONFIG_FLAG = "--resolved-config"
"""`python -m pretrain --resolved-config FILE`: train from FILE (no Hydra composition)."""


def write_resolved(path: str | Path, config: Any, overrides: list[str]) -> Path:
    """Write `config` (a DictConfig or a plain mapping) resolved, with its overrides."""
    from omegaconf import OmegaConf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    if isinstance(plain, dict):
        plain.pop("hydra", None)
    doc = OmegaConf.create(
        {"format": RESOLVED_FORMAT, "overrides": list(overrides), "config": plain}
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    OmegaConf.save(doc, tmp)
    os.replace(tmp, path)
    return path


def read_resolved(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """(config mapping, overrides) of a resolved-config file; ConfigError naming the file."""
    from omegaconf import OmegaConf

    path = Path(path)
    try:
        doc = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        raise ConfigError(
            f"{CONFIG_FLAG} {path}: no such file (it is written by `python -m "
            "pretrain.launch.resolve` or a sweep launcher; on a cluster it must be on a "
            "filesystem every node sees)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any YAML problem is the file's
        raise ConfigError(f"{CONFIG_FLAG} {path}: not a readable YAML file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESOLVED_FORMAT:
        raise ConfigError(
            f"{CONFIG_FLAG} {path}: not a resolved-config file (expected `format: "
            f"{RESOLVED_FORMAT}`); write it with `python -m pretrain.launch.resolve`"
        )
    config, overrides = doc.get("config"), doc.get("overrides") or []
    if not isinstance(config, dict):
        raise ConfigError(f"{CONFIG_FLAG} {path}: `config` is not a mapping")
    return config, [str(o) for o in overrides]
