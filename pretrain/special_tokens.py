"""The tokenizer pieces an objective needs (FIM sentinels, the MLM mask, CLS/SEP/pad), checked
before any process group starts.

The data's SentencePiece model is the source of truth (manifest `tokenizer.special_tokens`
lists the same pieces for people; manifests written before it existed lack the list). A piece
qualifies when the model has it as a control or user-defined piece: one id that text never
turns into by accident (control) or that is always matched whole (user-defined).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.config import ConfigError, PretrainConfig

RESERVE_HINT = (
    "prepare the data again with `python -m data_pipeline ... output.overwrite=true` and no "
    "tokenizer.model (a trained tokenizer reserves <fim_prefix> <fim_middle> <fim_suffix> "
    "<fim_pad> <mask> <image>: tokenizer.reserved_tokens)"
)


def _processor(manifest: dict[str, Any]) -> Any:
    import sentencepiece as spm

    path = Path(manifest["dir"]) / manifest["tokenizer"]["path"]
    return spm.SentencePieceProcessor(model_file=str(path)), path


def find_piece(processor: Any, piece: str) -> int | None:
    """The id of `piece` in a SentencePiece processor, or None when it has no such piece."""
    ident = processor.piece_to_id(piece)
    if processor.id_to_piece(ident) != piece or processor.is_unknown(ident):
        return None
    return ident


def piece_ids(manifest: dict[str, Any], pieces: dict[str, str]) -> dict[str, int]:
    """{config key: id} for {config key: piece}; ConfigError naming the first missing one."""
    sp, path = _processor(manifest)
    ids = {}
    for key, piece in pieces.items():
        ident = find_piece(sp, piece)
        if ident is None:
            raise ConfigError(
                f"{key}={piece!r} is not a piece of the data's tokenizer {path}: either "
                f"{RESERVE_HINT}, or set {key} to a control or user-defined piece of this "
                f"tokenizer (it has: {listed_pieces(sp)})"
            )
        if not (sp.is_control(ident) or _user_defined(path, ident)):
            raise ConfigError(
                f"{key}={piece!r} is an ordinary text piece of {path} (id {ident}), so documents "
                f"would contain it; {RESERVE_HINT}"
            )
        ids[key] = ident
    return ids


def _user_defined(path: Path, ident: int) -> bool:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto.pieces[ident].type == pb.ModelProto.SentencePiece.Type.USER_DEFINED


def listed_pieces(sp: Any) -> list[str]:
    """The control pieces of a SentencePiece processor (besides <s> </s> <pad>)."""
    basic = {sp.bos_id(), sp.eos_id(), sp.pad_id()}
    return [
        sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) and i not in basic
    ]


def fim_ids(cfg: PretrainConfig, manifest: dict[str, Any]) -> dict[str, int]:
    """role (prefix, middle, suffix, pad) -> id of the data.fim sentinels."""
    keys = {f"data.fim.{role}_token": piece for role, piece in cfg.data.fim.tokens().items()}
    ids = piece_ids(manifest, keys)
    return {role: ids[f"data.fim.{role}_token"] for role in cfg.data.fim.tokens()}


def mlm_ids(cfg: PretrainConfig, manifest: dict[str, Any]) -> dict[str, int]:
    """cls (<s>), sep (</s>, also the EOD between documents), pad and mask ids for objective=mlm."""
    sp, path = _processor(manifest)
    ids = {"cls": sp.bos_id(), "sep": sp.eos_id(), "pad": sp.pad_id()}
    for role, ident in ids.items():
        if ident < 0:
            piece = {"cls": "<s> (bos)", "sep": "</s> (eos)", "pad": "<pad>"}[role]
            raise ConfigError(
                f"objective=mlm needs the tokenizer piece {piece} as its {role.upper()} token, but "
                f"{path} has none; {RESERVE_HINT}"
            )
    ids["mask"] = piece_ids(manifest, {"objective.mask_token": cfg.objective.mask_token})[
        "objective.mask_token"
    ]
    return ids


def check_objective_tokens(cfg: PretrainConfig, manifests: list[dict[str, Any]]) -> None:
    """ConfigError (exit 2) when the objective's pieces are missing from the data's tokenizer."""
    if cfg.data.fim.rate > 0:
        fim_ids(cfg, manifests[0])
    if cfg.objective.name == "mlm":
        mlm_ids(cfg, manifests[0])
