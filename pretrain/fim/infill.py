"""Infilling prompts for a FIM-trained model: prefix + suffix -> the middle between them.

The prompt is the PSM form the model was trained on, up to the middle sentinel:
`<fim_prefix> enc(prefix) <fim_suffix> enc(suffix) <fim_middle>`; the model then writes the
middle and ends it with EOD (a transformed document's EOD follows its middle). Documents are
tokenized once as a whole, so the prefix is encoded like a document start (SentencePiece's
dummy-prefix space added) and the suffix, which sits mid-document, without it (`suffix_processor`).
Used by the end-of-run sample (`pretrain.sample`) and `python -m pretrain.generate suffix=...`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pretrain.config import ConfigError
from pretrain.special_tokens import find_piece

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Infill:
    """A prefix, the generated middle and the suffix (text)."""

    prefix: str
    middle: str
    suffix: str

    @property
    def text(self) -> str:
        """The infilled document: prefix + middle + suffix."""
        return self.prefix + self.middle + self.suffix


def suffix_processor(processor: Any) -> Any:
    """A copy of a SentencePiece processor that adds no dummy-prefix space (mid-document text)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(processor.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def sentinel_ids(processor: Any, pieces: dict[str, str], where: str) -> dict[str, int]:
    """role -> id of the FIM sentinels `pieces` (role -> piece); ConfigError if one is missing."""
    ids = {}
    for role, piece in pieces.items():
        ident = find_piece(processor, piece)
        if ident is None:
            raise ConfigError(
                f"suffix: infilling needs the sentinel {piece!r} (data.fim.{role}_token) but the "
                f"tokenizer of {where} has no such piece; it was trained without fill-in-the-"
                "middle sentinels (see docs/objectives.md)"
            )
        ids[role] = ident
    return ids


def prompt_ids(
    processor: Any, prefix: str, suffix: str, ids: dict[str, int], limit: int
) -> tuple[list[int], list[int]]:
    """(prompt ids, prefix ids): the PSM prompt of at most `limit` tokens.

    Too long a prompt is cut away from the middle: the prefix loses tokens at its start, the
    suffix at its end, each side keeping at least half the room when it needs it.
    """
    pre = [int(i) for i in processor.encode(prefix)]
    suf = [int(i) for i in suffix_processor(processor).encode(suffix)]
    room = max(0, limit - 3)
    if len(pre) + len(suf) > room:
        log.warning(
            "infill prompt of %d tokens is longer than the context allows (%d): it is cut",
            len(pre) + len(suf) + 3,
            limit,
        )
        keep_suf = min(len(suf), max(room - len(pre), room // 2))
        suf = suf[:keep_suf]
        pre = pre[len(pre) - min(len(pre), room - keep_suf) :]
    return [ids["prefix"], *pre, ids["suffix"], *suf, ids["middle"]], pre


def middle_text(
    decode: Callable[[list[int]], str], prefix_ids: Sequence[int], new_ids: Sequence[int], eod: int
) -> str:
    """The text of the generated middle (up to EOD), decoded in context after the prefix."""
    from pretrain.sample import continuation

    new = list(new_ids)
    if eod in new:
        new = new[: new.index(eod)]
    return continuation(decode, list(prefix_ids), new)


def report(infill: Infill, new_ids: Sequence[int]) -> None:
    """Log the middle on its own (the printed text is prefix + middle + suffix)."""
    log.info("infill middle (%d new tokens): %r", len(new_ids), infill.middle)
