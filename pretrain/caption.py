"""`python -m pretrain.caption IMAGE [IMAGE ...] checkpoint=PATH [max_new_tokens=32]`.

Captions images with an objective=llava checkpoint (any saved TP/PP/DP layout, loaded into one
TP1/PP1 model): each image is preprocessed exactly as the data pipeline prepares training
images (`pretrain.vlm.images`: RGB, shorter side to the checkpoint's vision.image_size with
bicubic resampling, center crop), and its greedy caption (`pretrain.vlm.sample.caption_ids`) is
printed, one line per image: `IMAGE<TAB>caption`. Logs go to stderr. A missing or unreadable
image, or a checkpoint that is not objective=llava, is a one-line error naming it (exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from pretrain.cli import run_tool, usage
from pretrain.config import ConfigError, ParallelConfig, PretrainConfig
from pretrain.special_tokens import find_piece

log = logging.getLogger("pretrain")

PROG = "python -m pretrain.caption"

SUMMARY = (
    "Caption images with an objective=llava checkpoint (iter_XXXXXXX dir, run dir or its\n"
    "`latest`; any layout). Each image (any size or mode PIL reads) is preprocessed like the\n"
    "training data (RGB, shorter side to the checkpoint's vision.image_size, bicubic, center\n"
    "crop); prints `IMAGE<TAB>caption` per image to stdout (greedy decoding)."
)
EXAMPLES = (
    "python -m pretrain.caption photo.png checkpoint=checkpoints/llava",
    "python -m pretrain.caption a.png b.jpg checkpoint=checkpoints/llava/iter_0000400 "
    "max_new_tokens=48",
)

_KEY = re.compile(r"^\+?[A-Za-z_][A-Za-z0-9_.]*=")


@dataclasses.dataclass
class CaptionConfig:
    """Options of `python -m pretrain.caption` (the images are the arguments without `=`)."""

    checkpoint: str = ""
    """An objective=llava checkpoint: an iter_XXXXXXX directory, a run directory or its
    `latest` file, any saved layout (loaded into one TP1/PP1 model). Required."""
    max_new_tokens: int = 32
    """Caption tokens to generate at most (fewer if EOD comes first or train.seq_length - 2 is
    reached)."""
    tokenizer: str | None = None
    """The SentencePiece model (None = the checkpoint's copy, else the data's)."""


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(image paths, key=value arguments): an argument is a key=value when it starts with a
    key name and `=`, unless it is an existing file (a file name may contain `=`)."""
    images, options = [], []
    for arg in argv:
        if _KEY.match(arg) and not Path(arg).is_file():
            options.append(arg)
        else:
            images.append(arg)
    return images, options


def check_images(images: list[str]) -> None:
    """ConfigError naming the first image argument that is missing or not a readable image."""
    from PIL import Image, UnidentifiedImageError

    if not images:
        raise ConfigError(f"caption: give at least one IMAGE file (see {PROG} --help)")
    for arg in images:
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(f"caption: image {arg}: no such file")
        try:
            with Image.open(path) as img:
                img.load()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
            raise ConfigError(f"caption: image {arg}: not a readable image file ({e})") from e


def check_config(cfg: CaptionConfig) -> None:
    """ConfigError naming a key whose value cannot work (before anything is loaded)."""
    if not cfg.checkpoint:
        raise ConfigError("caption: checkpoint=PATH is required (see --help)")
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"caption: max_new_tokens={cfg.max_new_tokens} must be >= 1")
    if cfg.tokenizer and not Path(cfg.tokenizer).is_file():
        raise ConfigError(f"caption: tokenizer={cfg.tokenizer} does not exist")


def saved_config(saved: dict[str, Any], ckpt_dir: Path) -> PretrainConfig:
    """The training config of a checkpoint's meta.json (CheckpointError unless llava)."""
    from pretrain.checkpoint.meta import CheckpointError, model_config_from_meta
    from pretrain.config import VisionConfig
    from pretrain.hf.export import objective_of

    objective = objective_of(saved)
    if objective != "llava":
        raise CheckpointError(
            f"caption: checkpoint={ckpt_dir} is an objective={objective} checkpoint, not an "
            "image-text one (objective=llava): it has no image encoder. Use "
            "`python -m pretrain.generate` for text models"
        )
    known = {f.name for f in dataclasses.fields(VisionConfig)}
    vision = {k: v for k, v in saved["config"].get("vision", {}).items() if k in known}
    cfg = PretrainConfig()
    cfg.model = model_config_from_meta(saved)
    cfg.vision = VisionConfig(**vision)
    cfg.train.seq_length = saved["config"]["train"]["seq_length"]
    cfg.precision = saved["precision"]
    cfg.objective.name = "llava"
    return cfg


def load_llava(
    ckpt_dir: Path, cfg: PretrainConfig, vocab_size: int, image_token_id: int
) -> list[Any]:
    """TP1/PP1 LLaVA chunks (eval mode) holding the checkpoint's weights; needs the process
    group started."""
    from pretrain.checkpoint import load_model_weights
    from pretrain.vlm.model import build_llava_model

    chunks = build_llava_model(cfg, vocab_size, image_token_id=image_token_id)
    load_model_weights(chunks, ckpt_dir)
    for chunk in chunks:
        chunk.eval()
    return chunks


def captions(cfg: CaptionConfig, images: list[str]) -> list[str]:
    """One caption per image (after the checks); starts a 1-process group."""

    from pretrain import parallel
    from pretrain.checkpoint import layout, meta
    from pretrain.checkpoint.meta import CheckpointError
    from pretrain.generate import checkpoint_tokenizer
    from pretrain.vlm.images import load_image
    from pretrain.vlm.sample import caption_ids, decode_caption

    try:
        ckpt_dir = layout.resolve_load_path(Path(cfg.checkpoint), key="checkpoint")
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
    saved = meta.read_meta(ckpt_dir)
    train_cfg = saved_config(saved, ckpt_dir)  # a non-llava checkpoint is refused here
    processor, tok_path = checkpoint_tokenizer(cfg.tokenizer, ckpt_dir, saved)
    vocab = processor.get_piece_size()
    image_token = train_cfg.vision.image_token
    image_id = find_piece(processor, image_token)
    if image_id is None:
        raise CheckpointError(f"tokenizer={tok_path} has no piece {image_token!r}")
    dist = parallel.init_distributed(ParallelConfig(), seed=saved["config"].get("seed", 1234))
    chunks = load_llava(ckpt_dir, train_cfg, vocab, image_id)
    log.info("loaded %s (step %d), tokenizer %s", ckpt_dir, saved["step"], tok_path)
    size = train_cfg.vision.image_size
    out = []
    for arg in images:
        start = time.perf_counter()
        new = caption_ids(
            chunks,
            load_image(Path(arg), size),
            image_token_id=image_id,
            dist=dist,
            seq_length=train_cfg.train.seq_length,
            vocab_size=vocab,
            eod=processor.eos_id(),
            max_new_tokens=cfg.max_new_tokens,
        )
        log.info("%s: token ids %s (%.1fs)", arg, new, time.perf_counter() - start)
        out.append(decode_caption(processor, new))
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for a bad image/key/checkpoint)."""
    args = list(sys.argv[1:] if argv is None else argv)
    images, options = split_args(args)
    if any(a in ("-h", "--help", "help") for a in args):
        text = usage(PROG, CaptionConfig, SUMMARY, EXAMPLES)
        print(
            text.replace("[key=value ...]", "IMAGE [IMAGE ...] checkpoint=PATH [key=value ...]", 1)
        )
        return 0

    def body(cfg: CaptionConfig) -> int:
        check_config(cfg)
        check_images(images)
        for arg, text in zip(images, captions(cfg, images), strict=True):
            sys.stdout.write(f"{arg}\t{text}\n")
        sys.stdout.flush()
        return 0

    return run_tool(PROG, CaptionConfig, body, SUMMARY, EXAMPLES, options)


if __name__ == "__main__":
    sys.exit(main())
