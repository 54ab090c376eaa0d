"""The exported model's tokenizer: SentencePiece's tokenizer.model plus a `tokenizers` pipeline
(tokenizer.json / tokenizer_config.json, `PreTrainedTokenizerFast`) that encodes and decodes
exactly like it. Used by `pretrain.hf.export`.

Control pieces that users must be able to write in a prompt (the FIM sentinels of a GPT export,
`<mask>` of a BERT export) are registered as added tokens matched in the text: SentencePiece
itself never produces them from text, so these strings are the one documented exception to
"encodes exactly like SentencePiece" (`write_tokenizer`, `write_bert_tokenizer`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from pretrain.checkpoint.meta import REDACTED, CheckpointError

_NORMAL, _USER_DEFINED = 1, 4  # SentencePiece piece types (ModelProto.SentencePiece.Type)
_NEVER = -1e9  # a unigram score no segmentation picks while any other one exists


def special_ids(tokenizer_model: Path) -> dict[str, Any]:
    """bos/eos/pad/unk ids and pieces of a SentencePiece model (-1 ids become None)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    out: dict[str, Any] = {"vocab_size": sp.get_piece_size()}
    for name, ident in (
        ("bos", sp.bos_id()),
        ("eos", sp.eos_id()),
        ("pad", sp.pad_id()),
        ("unk", sp.unk_id()),
    ):
        out[f"{name}_token_id"] = ident if ident >= 0 else None
        out[f"{name}_token"] = sp.id_to_piece(ident) if ident >= 0 else None
    return out


def _bpe_merges(proto: Any) -> list[tuple[str, str]]:
    """BPE merges ranked as SentencePiece applies them: by the merged piece's score, then id."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, ident) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, ident, left, right))
    return [(left, right) for _, _, left, right in sorted(ranked)]


def _tokenizer_model(proto: Any, user_defined: list[str]) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers.models import BPE, Unigram

    spec = proto.trainer_spec
    if spec.model_type == pb.TrainerSpec.BPE:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        return BPE(
            vocab,
            _bpe_merges(proto),
            unk_token=spec.unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
            ignore_merges=bool(user_defined),
        )
    if spec.model_type == pb.TrainerSpec.UNIGRAM:
        # SentencePiece never matches control, unknown or byte pieces in text: score them out
        matched = (_NORMAL, _USER_DEFINED)
        pieces = [(p.piece, p.score if p.type in matched else _NEVER) for p in proto.pieces]
        return Unigram(pieces, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    kind = pb.TrainerSpec.ModelType.Name(spec.model_type)
    raise CheckpointError(f"tokenizer: SentencePiece model_type {kind} cannot be exported")


def _dummy_prefix_steps(space: str, matched: list[str], prefix_piece: str | None) -> list[Any]:
    """Normalizer steps adding SentencePiece's dummy prefix once, at the start of the text.

    Without matched pieces: `Prepend`. With them (added tokens matched in the normalized text,
    so the text around them is normalized as a whole, as in training): no prefix when the text
    starts with a matched piece, so `"def main(<mask>):"` gives `... ( <mask> ):` and not a
    stray `▁` before `):`. Only after a leading `prefix_piece` (FIM's `<fim_prefix>`, followed
    by the document's start) the prefix is added behind it, as SentencePiece encoded that
    document. A matched piece normalized alone stays itself (tokenizers normalizes added tokens'
    content with this normalizer too).
    """
    from tokenizers import Regex, normalizers

    if not matched:
        return [normalizers.Prepend(space)]
    alternatives = "|".join(re.escape(p) for p in sorted(matched, key=len, reverse=True))
    steps = [normalizers.Replace(Regex(rf"\A(?!{alternatives})"), space)]
    if prefix_piece:
        after = rf"\A{re.escape(prefix_piece)}(?!{alternatives}|\z)"
        steps.append(normalizers.Replace(Regex(after), prefix_piece + space))
    return steps


def sentencepiece_backend(
    tokenizer_model: Path,
    matched: list[str] | None = None,
    prefix_piece: str | None = None,
    special: bool = False,
) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes exactly like the SentencePiece model.

    transformers' own conversion (LlamaTokenizer) puts the dummy prefix in a Metaspace
    pre-tokenizer, which skips it when the text already starts with a space: `"    x"` then
    encodes as 3 spaces + `x` and decodes as `"   x"`. Here the normalizer does what
    SentencePiece does: (charsmap, extra-whitespace removal,) spaces -> `▁`, then always the
    dummy `▁` prefix; the decoder strips exactly that one space again. No pre-tokenizer (BPE sees
    the whole text, as SentencePiece's pieces never cross a word start), except one isolating
    user-defined pieces, which SentencePiece emits whole. `matched` control pieces become added
    tokens found in the text (see `_dummy_prefix_steps` for the dummy prefix around them),
    `special` ones (skipped by decode's skip_special_tokens) or not.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer_model.read_bytes())
    norm = proto.normalizer_spec
    user_defined = [p.piece for p in proto.pieces if p.type == _USER_DEFINED]
    tokenizer = Tokenizer(_tokenizer_model(proto, user_defined))
    steps: list[Any] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [
            normalizers.Replace(Regex(r"\A +| +\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    space = "▁" if norm.escape_whitespaces else " "
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", space))
    if norm.add_dummy_prefix:
        steps += _dummy_prefix_steps(space, matched or [], prefix_piece)
    tokenizer.normalizer = normalizers.Sequence(steps)
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    chain = [decoders.Replace("▁", " ")]
    if proto.trainer_spec.byte_fallback:
        chain.append(decoders.ByteFallback())
    chain.append(decoders.Fuse())  # Strip works per token: fuse first, strip the text's start
    if norm.add_dummy_prefix and prefix_piece:  # the dummy prefix behind a leading prefix_piece
        lead = Regex(rf"\A{re.escape(prefix_piece)} ")
        chain.append(decoders.Replace(lead, prefix_piece))
    if norm.add_dummy_prefix:
        chain.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(chain)
    if matched:
        tokenizer.add_tokens([AddedToken(p, normalized=True, special=special) for p in matched])
    return tokenizer


FIM_PIECES = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")
"""data.fim's default sentinels (`python -m data_pipeline` reserves them: reserved_tokens)."""


def control_pieces(
    tokenizer_model: Path, wanted: list[str], user_defined: bool = False
) -> list[str]:
    """The pieces of `wanted` that the SentencePiece model has as control pieces (with
    `user_defined`, user-defined ones count too), in order."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer_model.read_bytes())
    kinds = {pb.ModelProto.SentencePiece.Type.CONTROL} | (
        {_USER_DEFINED} if user_defined else set()
    )
    types = {p.piece: p.type for p in proto.pieces}
    return [piece for piece in wanted if types.get(piece) in kinds]


def _piece(section: dict[str, Any], key: str, default: str) -> str:
    """A configured tokenizer piece; the default where meta.json lacks it or redacted it (its
    secret scrubbing treats names with `token` as secrets)."""
    value = section.get(key)
    return value if isinstance(value, str) and value and value != REDACTED else default


def fim_sentinels(saved: dict[str, Any]) -> list[str]:
    """The FIM sentinels (prefix, middle, suffix, pad) the run configured, else the defaults."""
    fim = saved.get("config", {}).get("data", {}).get("fim", {})
    keys = ("prefix_token", "middle_token", "suffix_token", "pad_token")
    return [_piece(fim, key, default) for key, default in zip(keys, FIM_PIECES, strict=True)]


def mask_piece(saved: dict[str, Any]) -> str:
    """objective.mask_token of the run (default `<mask>`)."""
    return _piece(saved.get("config", {}).get("objective", {}), "mask_token", "<mask>")


def write_tokenizer(
    out_dir: Path,
    tokenizer_model: Path,
    special: dict[str, Any],
    max_len: int,
    fim_pieces: list[str] | None = None,
) -> None:
    """tokenizer.model (the original) + tokenizer.json / tokenizer_config.json encoding like it.

    Contract: AutoTokenizer loads a `PreTrainedTokenizerFast` whose `encode(text)` equals
    `SentencePieceProcessor.encode(text)` (no BOS/EOS added: the data has none; special-token
    strings such as `</s>` in the text are text, as for SentencePiece) and whose
    `decode(ids, skip_special_tokens=True)` equals SentencePiece's decode, so
    `decode(encode(text)) == text` for any text (identity normalization, as data_pipeline
    trains). The exception are the FIM sentinels `fim_pieces` (control pieces, so SentencePiece
    never makes them from text; `fim_pieces[0]` is the prefix sentinel): each one written in
    the text is its id, so `"<fim_prefix>" + a + "<fim_suffix>" + b + "<fim_middle>"` encodes
    as `[prefix] + sp.encode(a) + [suffix] + <b's tokens> + [middle]`, where only the text
    right after a leading prefix sentinel gets SentencePiece's dummy-prefix space (it is the
    document's start; `b` is the tokens it has inside a document). They are added tokens that
    are not "special" (`split_special_tokens` splits those: `</s>` stays text), so `decode`
    writes them back as their strings, also with skip_special_tokens (SentencePiece decodes a
    control piece as ""). One decode difference is left: for byte-fallback tokens that do not
    form valid UTF-8 (only a model can emit those) transformers writes one U+FFFD per byte of
    the run, SentencePiece keeps the valid bytes in it. (For a unigram model, not what
    data_pipeline trains by default, ids can also differ where the two break a tie between
    segmentations of equal score, e.g. the same whitespace pieces in another order; decoding
    stays exact.) `tokenizer_class` is the generic fast class: the LlamaTokenizer class
    rebuilds its own Metaspace pipeline and would drop a leading space again.
    """
    fim = fim_pieces or []
    backend = sentencepiece_backend(tokenizer_model, fim, fim[0] if fim else None)
    _save(out_dir, tokenizer_model, backend, special, max_len, split_special_tokens=True)


def write_bert_tokenizer(
    out_dir: Path, tokenizer_model: Path, special: dict[str, Any], max_len: int, mask: str
) -> None:
    """The tokenizer of a MegatronBertForMaskedLM export: as `write_tokenizer`, plus training's
    window frame and the mask.

    `tokenizer(text)` gives `<s> + sp.encode(text) + </s>` (a TemplateProcessing
    post-processor: cls_token = <s>, sep_token = </s> as in training; pairs `<s> a </s> b </s>`);
    padding is `<pad>`. `mask` (`<mask>`) written in the text is the mask id, without a dummy-prefix
    space after it, so `pipeline("fill-mask")("def main(<mask>):")` works. Like RoBERTa's
    tokenizer (split_special_tokens false) `<s>`, `</s>`, `<pad>` written in text are those
    tokens too.
    """
    from tokenizers import processors

    backend = sentencepiece_backend(tokenizer_model, [mask], special=True)
    bos, eos = special["bos_token"], special["eos_token"]
    if not (bos and eos and special.get("pad_token")):
        raise CheckpointError(f"{tokenizer_model}: objective=mlm needs <s>, </s> and <pad> pieces")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B:1 {eos}:1",
        special_tokens=[(bos, special["bos_token_id"]), (eos, special["eos_token_id"])],
    )
    frame = {"cls_token": bos, "sep_token": eos, "mask_token": mask}
    _save(out_dir, tokenizer_model, backend, special, max_len, False, **frame)


def _save(
    out_dir: Path,
    tokenizer_model: Path,
    backend: Any,
    special: dict[str, Any],
    max_len: int,
    split_special_tokens: bool,
    **extra: Any,
) -> None:
    from transformers import PreTrainedTokenizerFast

    shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    names = ("bos", "eos", "unk", "pad")
    tokens = {f"{n}_token": special[f"{n}_token"] for n in names if special.get(f"{n}_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        split_special_tokens=split_special_tokens,
        model_max_length=max_len,
        **tokens,
        **extra,
    )
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4.x and 5.x
    config_path.write_text(json.dumps(config, indent=2) + "\n")
