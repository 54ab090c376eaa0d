"""The exported model's tokenizer: SentencePiece's tokenizer.model plus a `tokenizers` pipeline
(tokenizer.json / tokenizer_config.json, `PreTrainedTokenizerFast`) that encodes and decodes
exactly like it. Used by `pretrain.hf.export`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from pretrain.checkpoint.meta import CheckpointError

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


def sentencepiece_backend(tokenizer_model: Path) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes exactly like the SentencePiece model.

    transformers' own conversion (LlamaTokenizer) puts the dummy prefix in a Metaspace
    pre-tokenizer, which skips it when the text already starts with a space: `"    x"` then
    encodes as 3 spaces + `x` and decodes as `"   x"`. Here the normalizer does what
    SentencePiece does: (charsmap, extra-whitespace removal,) spaces -> `▁`, then always the
    dummy `▁` prefix; the decoder strips exactly that one space again. No pre-tokenizer (BPE sees
    the whole text, as SentencePiece's pieces never cross a word start), except one isolating
    user-defined pieces, which SentencePiece emits whole.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

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
        steps.append(normalizers.Prepend(space))
    tokenizer.normalizer = normalizers.Sequence(steps)
    if user_defined:
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    chain = [decoders.Replace("▁", " ")]
    if proto.trainer_spec.byte_fallback:
        chain.append(decoders.ByteFallback())
    chain.append(decoders.Fuse())  # Strip works per token: fuse first, strip the text's start
    if norm.add_dummy_prefix:
        chain.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(chain)
    return tokenizer


def write_tokenizer(out_dir: Path, tokenizer_model: Path, special: dict[str, Any], max_len: int):
    """tokenizer.model (the original) + tokenizer.json / tokenizer_config.json encoding like it.

    Contract: AutoTokenizer loads a `PreTrainedTokenizerFast` whose `encode(text)` equals
    `SentencePieceProcessor.encode(text)` (no BOS/EOS added: the data has none; special-token
    strings such as `</s>` in the text are text, as for SentencePiece) and whose
    `decode(ids, skip_special_tokens=True)` equals SentencePiece's decode, so
    `decode(encode(text)) == text` for any text (identity normalization, as data_pipeline
    trains). One decode difference is left: for byte-fallback tokens that do not form valid
    UTF-8 (only a model can emit those) transformers writes one U+FFFD per byte of the run,
    SentencePiece keeps the valid bytes in it. (For a unigram model, not what data_pipeline
    trains by default, ids can also differ where the two break a tie between segmentations of
    equal score, e.g. the same whitespace pieces in another order; decoding stays exact.)
    `tokenizer_class` is the generic fast class: the LlamaTokenizer class rebuilds its own
    Metaspace pipeline and would drop a leading space again.
    """
    from transformers import PreTrainedTokenizerFast

    shutil.copyfile(tokenizer_model, out_dir / "tokenizer.model")
    names = ("bos", "eos", "unk", "pad")
    tokens = {f"{n}_token": special[f"{n}_token"] for n in names if special.get(f"{n}_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=sentencepiece_backend(tokenizer_model),
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=max_len,
        **tokens,
    )
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 4.x and 5.x
    config_path.write_text(json.dumps(config, indent=2) + "\n")
