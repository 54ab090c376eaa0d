"""Hugging Face datasets: offline-safe hub check and opening a dataset (local dir or hub name)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from data_pipeline.errors import ConfigError


def _is_truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def check_hub_reachable(name: str) -> None:
    """Fail fast (never hang) when a hub dataset cannot be downloaded."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _is_truthy(os.environ.get(var)):
            raise ConfigError(
                f"input.paths: {name!r} is a Hugging Face hub dataset but {var}=1 (offline). "
                "Download it where there is network (datasets.load_dataset(...).save_to_disk(DIR)) "
                "and pass input.paths=[DIR], or unset the offline variables."
            )
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "", endpoint.port or 443
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as e:
        raise ConfigError(
            f"input.paths: {name!r} is a Hugging Face hub dataset but {host}:{port} cannot be "
            f"reached ({e}). Save it to disk where there is network and pass the local dir."
        ) from e


def is_saved_hf_dataset(path: Path) -> bool:
    names = ("dataset_info.json", "state.json", "dataset_dict.json")
    return path.is_dir() and any((path / n).is_file() for n in names)


def open_hf_dataset(name: str, split: str) -> Any:
    """A map-style `datasets.Dataset` from a save_to_disk dir, a local data dir or a hub name."""
    import datasets

    try:
        if is_saved_hf_dataset(Path(name)):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"input.hf_split={split!r}: {name} has splits {list(ds)}")
                ds = ds[split]
            return ds
        return datasets.load_dataset(name, split=split)
    except ConfigError:
        raise
    except Exception as e:  # datasets raises many types; add the key and re-raise
        raise ConfigError(f"input.paths: cannot open Hugging Face dataset {name!r}: {e}") from e
