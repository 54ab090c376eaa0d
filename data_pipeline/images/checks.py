"""Checks of an image-text job that run before anything is written (each a ConfigError)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.config import PrepareConfig
from data_pipeline.errors import ConfigError


def _check(cond: bool, key: str, value: object, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate_images(cfg: PrepareConfig) -> None:
    """The image-text keys (images.*, the input keys of the image formats, unsupported modes)."""
    inp, img = cfg.input, cfg.images
    _check(img.size >= 8, "images.size", img.size, "must be >= 8 pixels")
    why = "must be >= 1"
    _check(img.samples_per_shard >= 1, "images.samples_per_shard", img.samples_per_shard, why)
    token = img.image_token
    why = "must be one non-empty piece without whitespace"
    _check(bool(token) and not any(c.isspace() for c in token), "images.image_token", token, why)
    if cfg.tokenizer.model is None and token not in cfg.tokenizer.reserved_tokens:
        raise ConfigError(
            f"tokenizer.reserved_tokens={cfg.tokenizer.reserved_tokens}: a tokenizer trained for "
            f"image-text data must reserve images.image_token={token!r}; add it to the list"
        )
    _check(bool(inp.image_key), "input.image_key", inp.image_key, "must be a non-empty field")
    if inp.format == "synthetic_images":
        why = "the synthetic images come in two splits: use input.subset=train or heldout"
        _check(inp.subset in ("train", "heldout"), "input.subset", inp.subset, why)
        why = "input.format=synthetic_images generates its images and reads no files"
        _check(not inp.paths, "input.paths", inp.paths, why)
        count = inp.synthetic_count
        _check(count >= 1, "input.synthetic_count", count, "must be >= 1")
        from data_pipeline.images.synthetic import settings

        settings(inp.synthetic_seed, count, img.size, inp.subset)  # the generator's own checks
    elif inp.subset != "all":
        why = "only input.format=synthetic_images has train/heldout subsets"
        _check(False, "input.subset", inp.subset, why)
    unsupported = [
        (cfg.output.num_shards == 0, "output.num_shards", cfg.output.num_shards,
         "image-text shards are cut every images.samples_per_shard samples: set that instead"),
        (cfg.stage == "all", "stage", cfg.stage, "image-text data is made in one stage=all job"),
        (cfg.slice.resolved()[1] == 1, "slice.count", cfg.slice.resolved()[1],
         "image-text data is prepared by one job (no Slurm array slices)"),
    ]  # fmt: skip
    for ok, key, value, why in unsupported:
        _check(ok, key, value, why)


def check_image_token(model: str | Path, token: str) -> int:
    """The id of `token` in a given tokenizer.model; ConfigError naming the key and the fix when
    the model lacks that piece (it would be split into ordinary text pieces)."""
    from data_pipeline.tokenizer import load_processor

    sp = load_processor(model)
    piece_id = sp.piece_to_id(token)
    if piece_id == sp.unk_id() or sp.id_to_piece(piece_id) != token:
        raise ConfigError(
            f"tokenizer.model={str(model)!r} has no {token!r} piece (images.image_token), which "
            "marks the image position of image-text data. Use a tokenizer that reserves it: one "
            "trained by this version of `python -m data_pipeline` (tokenizer.reserved_tokens "
            f"includes {token!r}; retrain the text corpus' tokenizer), or tokenizer.model=null to "
            "train one on the captions."
        )
    return piece_id
