"""Start-of-run checks of the data directories: manifests, tokenizer, shard files.

Run by `pretrain.validate` before any process group exists, so a problem is one `ConfigError`
(exit 2) on every rank, before any step. Nothing on disk is trusted: the tokenizer is hashed
(small), every shard's `.idx` header is parsed and its size, and the `.bin` size it implies,
are compared with the files (cheap: a few bytes read per shard), so a shard truncated or
partly copied after preparation is found at start instead of failing, or silently training,
inside megatron. Full sha256 checksums of the shards only with `data.verify_checksums=true`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from pretrain.config import ConfigError, DataConfig, ModelConfig

IDX_MAGIC = b"MMIDIDX\x00\x00"
"""First bytes of a megatron MMIDIDX `.idx` file (megatron indexed_dataset._INDEX_HEADER)."""

IDX_HEADER_BYTES = 34
"""magic (9) + version <Q (8) + dtype code <B (1) + sequence count <Q (8) + document count <Q."""

DTYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
"""Token bytes per megatron `indexed_dataset.DType` code (uint8, int8, int16, int32, int64,
float64, float32, uint16)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: str | Path, index: int = 0, key: str = "data.paths") -> dict[str, Any]:
    """Parse `<directory>/manifest.json` (+ key "sha256" of its bytes, "dir" absolute path).

    `key` names the config list the directory comes from in messages (data.paths or
    data.valid_paths).
    """
    root = Path(directory)
    path = root / "manifest.json"
    key = f"{key}[{index}]={directory}"
    if not path.is_file():
        hint = (
            f"run `python -m data_pipeline output.dir={root}` first"
            if not root.exists()
            else (
                "the directory is incomplete (manifest.json is written last); "
                f"re-run `python -m data_pipeline output.dir={root}`"
            )
        )
        raise ConfigError(f"{key}: no manifest.json in {root.resolve()}; {hint}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{key}: {path} is not valid JSON ({exc})") from exc
    if manifest.get("format_version") != 1:
        raise ConfigError(
            f"{key}: {path} has format_version={manifest.get('format_version')!r}; this version of "
            "pretrain reads format_version 1 (docs/data_format.md)"
        )
    manifest["sha256"] = hashlib.sha256(raw).hexdigest()
    manifest["dir"] = str(root.resolve())
    return manifest


def read_valid_manifests(data_cfg: DataConfig) -> list[dict[str, Any]] | None:
    """The parsed manifests of data.valid_paths (None when it is not set)."""
    if data_cfg.valid_paths is None:
        return None
    return [read_manifest(p, i, "data.valid_paths") for i, p in enumerate(data_cfg.valid_paths)]


def _check_same_tokenizer(
    manifests: list[dict[str, Any]], paths: list[str], key: str, first: dict[str, Any]
) -> None:
    for i, manifest in enumerate(manifests):
        if manifest["tokenizer"]["sha256"] != first["sha256"]:
            raise ConfigError(
                f"{key}[{i}]={paths[i]} was tokenized with a different tokenizer "
                f"(sha256 {manifest['tokenizer']['sha256'][:12]}) than data.paths[0] "
                f"({first['sha256'][:12]}); prepare all directories with the same tokenizer.model"
            )


def _check_instruct(manifests: list[dict[str, Any]], paths: list[str], key: str) -> None:
    for i, manifest in enumerate(manifests):
        if "instruct" not in manifest:
            raise ConfigError(
                f"{key}[{i}]={paths[i]}: objective=sft needs instruction data, but this is "
                'pretraining data (its manifest.json has no "instruct" block, so no loss '
                "masks); prepare it with `python -m data_pipeline input.format=chat` (or "
                "input.format=prompt_completion), or train it with objective=lm"
            )


def check_manifests(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    verify_files: bool = True,
    objective: str = "lm",
) -> list[dict[str, Any]]:
    """Read every data.paths manifest and check tokenizers and files; return the manifests.

    data.valid_paths, when set, are checked the same way (their manifests are not returned,
    see `read_valid_manifests`). objective=sft: every directory must be instruction data
    (an `instruct` block) and its loss-mask files must match the token shards; objective=llava:
    image-text dirs (`pretrain.vlm.checks`), every other objective text dirs.
    """
    from pretrain.vlm.checks import check_files as check_image_text_files
    from pretrain.vlm.checks import check_kind

    if not data_cfg.paths:
        raise ConfigError("data.paths is empty; give at least one data directory")
    manifests = [read_manifest(p, i) for i, p in enumerate(data_cfg.paths)]
    check_kind(manifests, list(data_cfg.paths), "data.paths", objective)
    first = manifests[0]["tokenizer"]
    _check_same_tokenizer(manifests, list(data_cfg.paths), "data.paths", first)
    valid = read_valid_manifests(data_cfg) or []
    valid_paths = list(data_cfg.valid_paths or [])
    check_kind(valid, valid_paths, "data.valid_paths", objective)
    _check_same_tokenizer(valid, valid_paths, "data.valid_paths", first)
    sft = objective == "sft"
    if sft:
        _check_instruct(manifests, list(data_cfg.paths), "data.paths")
        _check_instruct(valid, valid_paths, "data.valid_paths")
    vocab = int(first["vocab_size"])
    if model_cfg.vocab_size is not None and model_cfg.vocab_size != vocab:
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} does not match the tokenizer of "
            f"data.paths[0]={data_cfg.paths[0]} (vocab_size={vocab}); set model.vocab_size={vocab}"
            " or model.vocab_size=null (take it from the data), or prepare data with a tokenizer "
            f"of {model_cfg.vocab_size} pieces"
        )
    if verify_files:
        for key, group in (("data.paths", manifests), ("data.valid_paths", valid)):
            for i, manifest in enumerate(group):
                where = f"{key}[{i}]"
                if objective == "llava":
                    check_image_text_files(manifest, where, data_cfg.verify_checksums)
                    continue
                _check_files(manifest, where, data_cfg.verify_checksums)
                if sft:
                    check_loss_masks(manifest, where, data_cfg.verify_checksums)
    return manifests


def _reprepare_hint(root: Path) -> str:
    return (
        "the data directory was modified, truncated or only partly copied after preparation; "
        f"re-run data preparation (`python -m data_pipeline output.dir={root} "
        "output.overwrite=true`) or copy the directory again"
    )


def _check_files(manifest: dict[str, Any], where: str, checksums: bool) -> None:
    root = Path(manifest["dir"])
    tok = root / manifest["tokenizer"]["path"]
    if not tok.is_file():
        raise ConfigError(f"{where}: tokenizer {tok} is missing")
    if _sha256(tok) != manifest["tokenizer"]["sha256"]:
        raise ConfigError(
            f"{where}: {tok} does not match the sha256 in its manifest.json; "
            "the directory was modified after preparation, re-run data preparation"
        )
    for shard in manifest["shards"]:
        for ext in (".bin", ".idx"):
            path = root / f"{shard['prefix']}{ext}"
            if not path.is_file():
                raise ConfigError(f"{where}: shard file {path} is missing")
        problem = shard_size_problem(root / shard["prefix"], shard.get("num_docs"))
        if problem:
            raise ConfigError(f"{where}: {problem}; {_reprepare_hint(root)}")
        if checksums:
            for ext in (".bin", ".idx"):
                path = root / f"{shard['prefix']}{ext}"
                want = shard.get(f"{ext[1:]}_sha256")
                if want and _sha256(path) != want:
                    raise ConfigError(
                        f"{where}: {path} fails its manifest sha256 check; {_reprepare_hint(root)}"
                    )


def _read_idx_header(idx: Path) -> tuple[int, int, int] | str:
    """(token bytes, sequence count, document count) of an MMIDIDX header, or the problem."""
    with idx.open("rb") as handle:
        head = handle.read(IDX_HEADER_BYTES)
    if len(head) < IDX_HEADER_BYTES:
        return (
            f"{idx} is truncated ({len(head)} bytes, less than its {IDX_HEADER_BYTES}-byte header)"
        )
    (version,) = struct.unpack("<Q", head[9:17])
    if head[:9] != IDX_MAGIC or version != 1:
        return f"{idx} is not a megatron MMIDIDX version-1 index (its header is wrong)"
    if head[17] not in DTYPE_SIZES:
        return f"{idx} names an unknown token dtype code {head[17]}"
    sequences, documents = struct.unpack("<QQ", head[18:34])
    return DTYPE_SIZES[head[17]], sequences, documents


def _read_at(path: Path, offset: int, fmt: str) -> int:
    with path.open("rb") as handle:
        handle.seek(offset)
        return int(struct.unpack(fmt, handle.read(struct.calcsize(fmt)))[0])


def shard_size_problem(prefix: Path, num_docs: int | None = None) -> str | None:
    """What is wrong with the sizes of `<prefix>.idx` / `<prefix>.bin` (None: they agree).

    The `.idx` must be exactly header + int32 lengths + int64 pointers (one per sequence) +
    int64 document indices; the `.bin` must end where the last sequence does (its pointer plus
    its length x the token size). Reads 34 + 12 bytes of the `.idx`, whatever the shard's size.
    """
    idx, bin_path = Path(f"{prefix}.idx"), Path(f"{prefix}.bin")
    header = _read_idx_header(idx)
    if isinstance(header, str):
        return header
    token_bytes, sequences, documents = header
    idx_size = idx.stat().st_size
    want_idx = IDX_HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if idx_size != want_idx:
        return (
            f"{idx} has {idx_size} bytes but its header describes {sequences} sequences and "
            f"{documents} document boundaries ({want_idx} bytes)"
        )
    if num_docs is not None and sequences != int(num_docs):
        return f"{idx} holds {sequences} documents, its manifest.json says {num_docs}"
    want_bin = 0
    if sequences:
        length = _read_at(idx, IDX_HEADER_BYTES + 4 * (sequences - 1), "<i")
        pointer = _read_at(idx, IDX_HEADER_BYTES + 4 * sequences + 8 * (sequences - 1), "<q")
        want_bin = pointer + length * token_bytes
    bin_size = bin_path.stat().st_size
    if bin_size != want_bin:
        return f"{bin_path} has {bin_size} bytes but its index {idx.name} says {want_bin}"
    return None


def _sequence_lengths(idx: Path, sequences: int):
    import numpy as np

    return np.fromfile(idx, dtype="<i4", count=sequences, offset=IDX_HEADER_BYTES)


def _loss_mask_problem(root: Path, shard: dict[str, Any]) -> str | None:
    """What is wrong with a shard's loss-mask dataset against its token shard (None: fine)."""
    info = shard.get("loss_mask")
    if not isinstance(info, dict) or "prefix" not in info:
        return f'shard {shard["prefix"]} has no "loss_mask" entry in manifest.json'
    prefix = root / info["prefix"]
    for ext in (".bin", ".idx"):
        if not Path(f"{prefix}{ext}").is_file():
            return f"loss-mask file {prefix}{ext} is missing"
    problem = shard_size_problem(prefix, shard.get("num_docs"))
    if problem:
        return problem
    header = _read_idx_header(Path(f"{prefix}.idx"))
    tokens = _read_idx_header(root / f"{shard['prefix']}.idx")
    assert not isinstance(header, str) and not isinstance(tokens, str)  # checked above
    if header[0] != 1:
        return f"{prefix}.idx is not a uint8 loss mask (its dtype has {header[0]} bytes)"
    if header[1] != tokens[1]:
        return (
            f"{prefix}.idx holds {header[1]} documents, its token shard "
            f"{shard['prefix']}.idx {tokens[1]}"
        )
    mask_lengths = _sequence_lengths(Path(f"{prefix}.idx"), header[1])
    token_lengths = _sequence_lengths(root / f"{shard['prefix']}.idx", tokens[1])
    differ = (mask_lengths != token_lengths).nonzero()[0]
    if len(differ):
        doc = int(differ[0])
        return (
            f"{prefix}.idx: document {doc} has {int(mask_lengths[doc])} mask values but "
            f"{int(token_lengths[doc])} tokens in {shard['prefix']}.bin"
        )
    return None


def check_loss_masks(manifest: dict[str, Any], where: str, checksums: bool) -> None:
    """The loss-mask dataset of every shard exists, is uint8, and matches the token shard's
    document count and lengths; with `checksums`, also its manifest sha256s."""
    root = Path(manifest["dir"])
    for shard in manifest["shards"]:
        problem = _loss_mask_problem(root, shard)
        if problem:
            raise ConfigError(f"{where}: {problem}; {_reprepare_hint(root)}")
        if not checksums:
            continue
        for ext in (".bin", ".idx"):
            path = root / f"{shard['loss_mask']['prefix']}{ext}"
            want = shard["loss_mask"].get(f"{ext[1:]}_sha256")
            if want and _sha256(path) != want:
                raise ConfigError(
                    f"{where}: {path} fails its manifest sha256 check; {_reprepare_hint(root)}"
                )
