"""objective=llava start-of-run checks (before any process group): config and image-text data.

`check_kind` keeps text and image-text data apart for every objective; `check_files` is the
image-text counterpart of `pretrain.data_checks._check_files` (tokenizer hash, every shard's
tar and index present, the index's shape and the tar's size agree, sha256 with
data.verify_checksums); `check_llava` checks the vision.* keys, the parallel features
megatron-core's LLaVAModel supports without Transformer Engine, and the data's image size.
Every problem is a ConfigError (exit 2) naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pretrain.config import ConfigError, PretrainConfig

IMAGE_TEXT = "image_text"
"""manifest.json "kind" of image-text data (text data has no kind, or "text")."""


def kind_of(manifest: dict[str, Any]) -> str:
    """A data directory's kind: image_text or text."""
    return str(manifest.get("kind", "text"))


def check_kind(manifests: list[dict[str, Any]], paths: list[str], key: str, objective: str) -> None:
    """objective=llava needs image-text dirs; every other objective text dirs."""
    for i, manifest in enumerate(manifests):
        kind = kind_of(manifest)
        if objective == "llava" and kind != IMAGE_TEXT:
            raise ConfigError(
                f"{key}[{i}]={paths[i]}: objective=llava needs image-text data (manifest.json "
                f'"kind": "image_text"), but this is {kind} data; prepare it with `python -m '
                "data_pipeline input=synthetic_images` (or input.format=image_text|webdataset|"
                "hf_images), or train it with objective=lm"
            )
        if objective != "llava" and kind != "text":
            raise ConfigError(
                f"{key}[{i}]={paths[i]} is {kind} data (images and captions): objective="
                f"{objective} trains on text data; set objective=llava, or give a text data "
                "directory"
            )


def _sha256(path: Path) -> str:
    from pretrain.data_checks import _sha256 as sha

    return sha(path)


def _shard_problem(root: Path, shard: dict[str, Any], checksums: bool) -> str | None:
    tar, idx = root / shard["tar"], root / shard["index"]
    for path in (tar, idx):
        if not path.is_file():
            return f"shard file {path} is missing"
    try:
        index = np.load(idx, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"{idx} is not a readable .npy offset index ({exc})"
    if index.ndim != 2 or index.shape[1] != 4 or not np.issubdtype(index.dtype, np.integer):
        return f"{idx} must be an int64 [samples, 4] array, it is {index.dtype} {index.shape}"
    if len(index) != int(shard["num_samples"]):
        return f"{idx} indexes {len(index)} samples, manifest.json says {shard['num_samples']}"
    if len(index):
        end = int(max((index[:, 0] + index[:, 1]).max(), (index[:, 2] + index[:, 3]).max()))
        size = tar.stat().st_size
        if end > size or int(index.min()) < 0:
            return f"{tar} has {size} bytes but its index {idx.name} points up to byte {end}"
    if checksums:
        for path, want in ((tar, shard.get("sha256")), (idx, shard.get("index_sha256"))):
            if want and _sha256(path) != want:
                return f"{path} fails its manifest sha256 check"
    return None


def check_files(manifest: dict[str, Any], where: str, checksums: bool) -> None:
    """The tokenizer and every tar/index shard of an image-text dir are there and agree."""
    from pretrain.data_checks import _reprepare_hint

    root = Path(manifest["dir"])
    tok = root / manifest["tokenizer"]["path"]
    if not tok.is_file() or _sha256(tok) != manifest["tokenizer"]["sha256"]:
        raise ConfigError(
            f"{where}: tokenizer {tok} is missing or does not match the sha256 in its "
            "manifest.json; re-run data preparation"
        )
    shards = manifest.get(IMAGE_TEXT, {}).get("shards")
    if not shards:
        raise ConfigError(f'{where}: manifest.json of {root} lists no "image_text" shards')
    for shard in shards:
        problem = _shard_problem(root, shard, checksums)
        if problem:
            raise ConfigError(f"{where}: {problem}; {_reprepare_hint(root)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_llava_config(cfg: PretrainConfig) -> None:
    """vision.* and the keys objective=llava does not support (no data needed)."""
    from pretrain.vlm.model import combined_length

    v, p, m = cfg.vision, cfg.parallel, cfg.model
    for key in ("image_size", "patch_size", "num_layers", "hidden_size", "num_attention_heads"):
        _require(getattr(v, key) >= 1, f"vision.{key}={getattr(v, key)} must be >= 1")
    _require(
        v.image_size % v.patch_size == 0,
        f"vision.image_size={v.image_size} must be divisible by vision.patch_size={v.patch_size}",
    )
    _require(
        v.hidden_size % v.num_attention_heads == 0,
        f"vision.hidden_size={v.hidden_size} must be divisible by vision.num_attention_heads="
        f"{v.num_attention_heads}",
    )
    tp = p.tensor_model_parallel_size
    _require(
        v.num_attention_heads % tp == 0,
        f"vision.num_attention_heads={v.num_attention_heads} must be divisible by "
        f"parallel.tensor_model_parallel_size={tp}",
    )
    for key in ("ffn_hidden_size", "projector_ffn_hidden_size"):
        value = getattr(v, key)
        _require(value is None or value >= 1, f"vision.{key}={value} must be >= 1 (or null)")
    combined = combined_length(cfg)
    _require(
        combined <= m.max_position_embeddings,
        f"train.seq_length={cfg.train.seq_length} - 1 + {combined - cfg.train.seq_length + 1} "
        f"image embeddings (vision.image_size / vision.patch_size squared) = {combined} "
        f"positions exceed model.max_position_embeddings={m.max_position_embeddings}; lower "
        "train.seq_length or raise model.max_position_embeddings or vision.patch_size",
    )
    _require(
        cfg.train.seq_length >= 3,
        f"train.seq_length={cfg.train.seq_length}: objective=llava needs <image>, a caption "
        "token and the end-of-caption token",
    )
    _require(
        not p.sequence_parallel,
        "parallel.sequence_parallel=true is not supported with objective=llava: megatron-core's "
        "LLaVAModel needs Transformer Engine attention for sequence (and context) parallelism; "
        "set parallel.sequence_parallel=false",
    )
    _require(
        cfg.peft.type == "none",
        f"peft.type={cfg.peft.type} is not supported with objective=llava yet; set peft=none "
        "(vision.stage=align trains only the projector)",
    )
    _require(
        cfg.data.weights is None,
        f"data.weights={list(cfg.data.weights or [])} is not supported with objective=llava: "
        "every sample of every data.paths entry is visited once per epoch; set "
        "data.weights=null (repeat a directory in data.paths to upweight it)",
    )
    _require(
        cfg.data.valid_paths is None or len(cfg.data.valid_paths) > 0,
        "data.valid_paths=[] is empty; give at least one data directory or null (= data.split)",
    )


def check_llava_data(cfg: PretrainConfig, manifests: list[dict[str, Any]]) -> None:
    """The data's image size is vision.image_size; the tokenizer has vision.image_token."""
    from pretrain.data_checks import read_valid_manifests
    from pretrain.special_tokens import piece_ids

    groups = (("data.paths", manifests), ("data.valid_paths", read_valid_manifests(cfg.data)))
    for key, group in groups:
        for i, manifest in enumerate(group or []):
            size = manifest[IMAGE_TEXT].get("image_size")
            _require(
                size == cfg.vision.image_size,
                f"{key}[{i}]={manifest['dir']} holds {size}x{size} images (manifest.json "
                f"image_text.image_size) but vision.image_size={cfg.vision.image_size}; set "
                f"vision.image_size={size}, or prepare the data with images.size="
                f"{cfg.vision.image_size}",
            )
    piece_ids(manifests[0], {"vision.image_token": cfg.vision.image_token})
