"""SentencePiece training, model checks and the two encoders (SentencePiece, kitoken)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from data_pipeline.config import TokenizerConfig
from data_pipeline.diskspace import disk_full_guard
from data_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

TRAIN_CHUNK_CHARS = 4096
"""Documents are cut at line ends into pieces of at most this many characters for training
(SentencePiece drops longer sentences)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def tmp_suffix() -> str:
    """Unique per writer, also across nodes sharing a file system (Slurm arrays)."""
    return f"tmp-{socket.gethostname()}-{os.getpid()}"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary name next to `path`, fsync, then rename over `path`.

    A full disk or quota raises DiskFullError naming `path`; `path` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.{tmp_suffix()}")
    with disk_full_guard(path, "the file"):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # disk full, Ctrl-C: leave no temporary file behind
            tmp.unlink(missing_ok=True)
            raise


def _chunks(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        current: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            for start in range(0, max(len(line), 1), TRAIN_CHUNK_CHARS):
                part = line[start : start + TRAIN_CHUNK_CHARS]
                if size + len(part) > TRAIN_CHUNK_CHARS and current:
                    yield "".join(current)
                    current, size = [], 0
                current.append(part)
                size += len(part)
        if current:
            yield "".join(current)


def train_options(cfg: TokenizerConfig, special_tokens: Iterable[str] = ()) -> dict[str, Any]:
    """SentencePiece trainer options: Llama-style, safe for code (no whitespace collapsing).

    `special_tokens` (a chat template's markers) become user_defined_symbols: one piece each,
    always matched whole. `cfg.reserved_tokens` become control_symbols: never matched in text.
    """
    options = {
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.type,
        "character_coverage": cfg.character_coverage,
        "byte_fallback": True,
        "split_digits": True,
        "allow_whitespace_only_pieces": True,
        "remove_extra_whitespaces": False,
        "normalization_rule_name": "identity",
        "add_dummy_prefix": True,
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": 3,
        "num_threads": cfg.train_threads,
        "input_sentence_size": 0,
        "max_sentence_length": TRAIN_CHUNK_CHARS * 4,
        "minloglevel": 2,
    }
    if special_tokens:
        options["user_defined_symbols"] = list(special_tokens)
    if cfg.reserved_tokens:
        options["control_symbols"] = list(cfg.reserved_tokens)
    return options


def train_model(
    cfg: TokenizerConfig, texts: Iterable[str], special_tokens: Iterable[str] = ()
) -> bytes:
    """Train a SentencePiece model on `texts` (reserving `special_tokens`); return the model."""
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_chunks(texts),
            model_writer=model,
            **train_options(cfg, special_tokens),
        )
    except RuntimeError as e:
        raise ConfigError(_training_error(cfg, str(e))) from e
    return model.getvalue()


def _training_error(cfg: TokenizerConfig, message: str) -> str:
    """SentencePiece's training error, translated into the keys to change."""
    found = re.search(
        r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message
    )
    if found:
        return (
            f"tokenizer.vocab_size={cfg.vocab_size} is too large for this corpus: SentencePiece "
            f"can make at most {found.group(2)} pieces from the training sample. Set "
            f"tokenizer.vocab_size={found.group(2)} or lower, or give more text (more input, "
            f"or a larger tokenizer.sample_bytes={cfg.sample_bytes})."
        )
    if "sentences_.empty()" in message:
        return (
            "tokenizer training found no usable document in the input (every record was skipped "
            "or empty): check input.paths, input.format and input.text_key, or give an existing "
            "model with tokenizer.model=PATH."
        )
    return (
        f"tokenizer training failed ({message}). Adjust tokenizer.vocab_size={cfg.vocab_size}, "
        f"tokenizer.character_coverage={cfg.character_coverage} or "
        f"tokenizer.sample_bytes={cfg.sample_bytes}."
    )


def load_processor(path: str | Path) -> Any:
    """A SentencePieceProcessor, or ConfigError naming tokenizer.model when the file is not one."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise ConfigError(
            f"tokenizer.model={str(path)!r} is not a SentencePiece model ({e}). "
            "Give a .model file written by SentencePiece, or tokenizer.model=null to train one."
        ) from e


def tokenizer_info(path: Path, rel_path: str) -> dict[str, Any]:
    """The manifest's `tokenizer` entry."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    sp = load_processor(path)
    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    model_type = pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
    if sp.eos_id() < 0:
        raise ConfigError(f"tokenizer.model={str(path)!r} has no </s> (eos) piece to use as EOD")
    return {
        "path": rel_path,
        "sha256": sha256_file(path),
        "vocab_size": sp.vocab_size(),
        "eod_id": sp.eos_id(),
        "bos_id": sp.bos_id(),
        "pad_id": sp.pad_id(),
        "unk_id": sp.unk_id(),
        "type": model_type,
        "special_tokens": special_pieces(proto),
    }


def special_pieces(proto: Any) -> dict[str, int]:
    """piece -> id of the model's control and user-defined pieces besides <s> </s> <pad>."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    kinds = (
        pb.ModelProto.SentencePiece.Type.CONTROL,
        pb.ModelProto.SentencePiece.Type.USER_DEFINED,
    )
    spec = proto.trainer_spec
    basic = {spec.bos_piece, spec.eos_piece, spec.pad_piece, spec.unk_piece}
    return {
        p.piece: i for i, p in enumerate(proto.pieces) if p.type in kinds and p.piece not in basic
    }


def kitoken_unsupported_reason(path: str | Path) -> str | None:
    """None when kitoken is known to give SentencePiece's ids for this model, else why not.

    Measured here: BPE models with identity normalization, no whitespace collapsing and byte
    fallback match id for id; unigram, NFKC normalization, remove_extra_whitespaces and models
    without byte fallback did not.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    user_defined = pb.ModelProto.SentencePiece.Type.USER_DEFINED
    checks = [
        (spec.model_type == pb.TrainerSpec.BPE, "model_type is not BPE"),
        (spec.byte_fallback, "byte_fallback is off"),
        (
            norm.name == "identity" and not norm.precompiled_charsmap,
            "normalization is not identity",
        ),
        (not norm.remove_extra_whitespaces, "remove_extra_whitespaces is on"),
        (not any(p.type == user_defined for p in proto.pieces), "it has user-defined pieces"),
    ]
    reasons = [why for ok, why in checks if not ok]
    return "; ".join(reasons) if reasons else None


def choose_encoder(requested: str, path: Path) -> tuple[str, str]:
    """(encoder name, why) for tokenizer.encoder=auto|sentencepiece|kitoken."""
    if requested == "sentencepiece":
        return "sentencepiece", "tokenizer.encoder=sentencepiece"
    reason = kitoken_unsupported_reason(path)
    if reason is None:
        try:
            from kitoken import Kitoken

            Kitoken.from_sentencepiece_file(str(path))
        except Exception as e:  # kitoken raises plain exceptions for unsupported models
            reason = f"kitoken cannot load it ({e})"
    if reason is None:
        return "kitoken", "model settings supported; verified per shard against SentencePiece"
    if requested == "kitoken":
        raise ConfigError(
            f"tokenizer.encoder=kitoken: this model is not supported by kitoken ({reason}). "
            "Use tokenizer.encoder=auto or sentencepiece."
        )
    return "sentencepiece", f"kitoken not used: {reason}"


class Encoder:
    """Encodes batches of documents with SentencePiece or kitoken (one process, one thread)."""

    def __init__(self, model_path: str, name: str) -> None:
        self.name = name
        self.sp = load_processor(model_path)
        self.kitoken = None
        if name == "kitoken":
            from kitoken import Kitoken

            self.kitoken = Kitoken.from_sentencepiece_file(model_path)

    def encode(self, texts: list[str], name: str | None = None) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS). `name` forces one encoder (for verification)."""
        name = name or self.name
        if name == "kitoken" and self.kitoken is not None:
            encode = self.kitoken.encode
            return [encode(text) for text in texts]
        return self.sp.encode(texts, num_threads=1)
