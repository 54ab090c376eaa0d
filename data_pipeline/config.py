"""Typed configuration of the data-preparation job (`python -m data_pipeline`).

Every field's docstring is its user documentation (README.md, "Data preparation"). Build a config
without Hydra with `PrepareConfig(input=InputConfig(paths=[...]), ...)`; `__main__` composes the
same dataclasses from conf/prepare.yaml and converts them with `OmegaConf.to_object`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from data_pipeline.errors import ConfigError

IMAGE_FORMATS = ("image_text", "webdataset", "hf_images", "synthetic_images")
"""Formats whose records are image-caption pairs (data_pipeline.images): written as tar shards
in the webdataset layout (docs/data_format.md, "Image-text data")."""
FORMATS = ("auto", "jsonl", "parquet", "text", "hf", "chat", "prompt_completion", *IMAGE_FORMATS)
INSTRUCT_FORMATS = ("chat", "prompt_completion")
"""Formats whose records are instruction examples (data_pipeline.instruct): one example per
document plus an aligned loss mask."""
ENCODERS = ("auto", "sentencepiece", "kitoken")
STAGES = ("all", "tokenizer", "finalize")


@dataclass
class InputConfig:
    """Where the raw documents come from."""

    name: str = "custom"
    """Short name of the corpus; names the default output dir checkpoints/data/<name>."""
    paths: list[str] = field(default_factory=list)
    """Files, globs or folders (read recursively), or a Hugging Face dataset (a local dir, or a
    hub name written `hf:NAME`). `stdlib:` is the running Python's standard library."""
    format: str = "auto"
    """auto | jsonl | parquet | text | hf | chat | prompt_completion. `auto` decides per file from
    its suffix (.jsonl/.json/.ndjson[.gz|.zst], .parquet, anything else is text). chat and
    prompt_completion are instruction examples (JSONL by suffix, or parquet, or `hf:`), written
    with a loss mask (docs/data_preparation.md, "Instruction data")."""
    text_key: str = "text"
    """Field holding the document text in JSONL objects, parquet columns and HF datasets. A
    dotted key reads a nested field (`meta.text`: JSONL {"meta": {"text": ...}}, or field `text`
    of a struct column `meta`); a JSONL key literally named `meta.text` wins."""
    text_unit: str = "file"
    """For text files: `file` (a whole file is one document) or `line` (one document per line)."""
    include: list[str] = field(default_factory=lambda: ["*"])
    """Glob patterns on file names or relative paths kept when a folder is listed (['*.py'])."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns on relative paths dropped when a folder is listed (['site-packages/*'])."""
    hf_split: str = "train"
    """Split of a Hugging Face dataset (`input.format=hf`)."""
    on_error: str = "skip"
    """skip: count bad records (reason, file:line) in the log and manifest and go on;
    fail: stop with a non-zero exit at the first bad record or empty input file."""
    max_examples: int = 5
    """How many file:line examples of each skip reason are kept in the manifest."""
    messages_key: str = "messages"
    """format=chat: field holding the list of turns {role, content} (roles: system, first and
    optional; user; assistant)."""
    prompt_key: str = "prompt"
    """format=prompt_completion: field holding the prompt (the user turn)."""
    completion_key: str = "completion"
    """format=prompt_completion: field holding the completion (the assistant turn, the target)."""
    template: str | None = None
    """Chat template: null (plain for prompt_completion, default for chat), a built-in name
    (plain, default, llama3) or the path of a Jinja file that gets `messages`, `target_start`
    and `target_end` and puts the two markers around every text to learn."""
    special_tokens: list[str] = field(default_factory=list)
    """Extra special tokens a user template file emits (built-ins declare their own); reserved
    when the tokenizer is trained, and each must be one piece of a given tokenizer.model."""
    max_tokens: int = 2048
    """Longest instruction example kept, in tokens including the final EOD."""
    overlong: str = "truncate"
    """Examples longer than max_tokens: truncate (keep the first max_tokens tokens; an example
    left with no target token is dropped) or drop. Both are counted in manifest `instruct`."""
    python_pairs: bool = False
    """Read each input file as Python source and make one prompt_completion example per
    documented function (data_pipeline.instruct.stdlib_pairs); input=stdlib_instruct sets it."""
    subset: str = "all"
    """all | train | heldout: keep every input file, or only those of the training or held-out
    split (a file is held out when the sha256 of its path relative to its input.paths folder
    falls below heldout_fraction), so the two splits never share a file (module)."""
    heldout_fraction: float = 0.05
    """Fraction of input files (modules) in the held-out split (input.subset), in [0, 1]."""
    image_key: str = "image"
    """Image-text data: field of a JSONL record (format=image_text) or column of a Hugging Face
    dataset (format=hf_images) holding the image (a path; or PIL images / {bytes, path})."""
    synthetic_count: int = 4000
    """format=synthetic_images: number of generated image-caption pairs."""
    synthetic_seed: int = 0
    """format=synthetic_images: seed of the generated scenes (with input.subset=train|heldout,
    which never share a colour-shape combination)."""

    def is_instruct(self) -> bool:
        """Whether the records are instruction examples (format chat or prompt_completion)."""
        return self.format in INSTRUCT_FORMATS

    def is_images(self) -> bool:
        """Whether the records are image-caption pairs (an image-text format)."""
        return self.format in IMAGE_FORMATS


@dataclass
class TokenizerConfig:
    """Which SentencePiece model encodes the documents (trained on the input if `model` is null)."""

    model: str | None = None
    """Path of an existing SentencePiece .model. null: train one on a sample of the input."""
    vocab_size: int = 8192
    """Vocabulary size of a trained model (>= 300 with byte fallback)."""
    type: str = "bpe"
    """bpe | unigram (unigram trains ~30x slower and is encoded by SentencePiece, not kitoken)."""
    sample_bytes: int = 16_000_000
    """Bytes of text sampled (deterministically, from `seed`) from the input to train on."""
    seed: int = 1234
    """Seed of the training sample selection."""
    character_coverage: float = 0.9995
    """SentencePiece character_coverage in [0.98, 1.0]; rarer characters fall back to bytes."""
    train_threads: int = 1
    """Threads used by SentencePiece training. The model depends on it, so it is fixed rather
    than taken from the machine; keep it equal across runs for identical models."""
    encoder: str = "auto"
    """auto | sentencepiece | kitoken. auto uses kitoken (several times faster) when the model's
    settings are supported and a sample of every shard matches SentencePiece id for id."""
    verify_docs: int = 64
    """With kitoken: the first N documents of each shard, plus in every later batch the first
    document of at most 16k characters, are also encoded by SentencePiece; any difference
    rebuilds the shard with SentencePiece."""
    reserved_tokens: list[str] = field(
        default_factory=lambda: [
            "<fim_prefix>",
            "<fim_middle>",
            "<fim_suffix>",
            "<fim_pad>",
            "<mask>",
            "<image>",
        ]
    )
    """Pieces a trained tokenizer reserves (SentencePiece control symbols, ids 4, 5, ... after
    <unk> <s> </s> <pad>) for the training objectives: the fill-in-the-middle sentinels
    (pretrain data.fim.*), the masked-LM mask (objective=mlm) and the image placeholder of
    image-text data (objective=llava, pretrain vision.image_token). They are never produced from
    text (a document containing the string `<mask>` is encoded as ordinary text), only placed by
    id, and are listed in manifest `tokenizer.special_tokens`. [] reserves none. Ignored with
    tokenizer.model (its own pieces are listed)."""


@dataclass
class OutputConfig:
    """Where and how the indexed dataset is written."""

    dir: str = ""
    """Output directory. Empty: checkpoints/data/<input.name> under the repository."""
    num_shards: int = 0
    """Number of shard pairs shard_NNNNN.bin/.idx. 0: one per `shard_input_mb` of input. Shards
    that receive no document are left out of the manifest (numbers are not reused)."""
    shard_input_mb: float = 64.0
    """With num_shards=0: input megabytes (on disk) per shard. For ~T tokens per shard use
    T * bytes_per_token / 1e6 (bytes_per_token from `python -m data_pipeline.inspect`)."""
    overwrite: bool = False
    """Delete the shards, tokenizer and manifest already in `dir` instead of refusing to mix."""


@dataclass
class ImageConfig:
    """Image-text data (input.format=image_text|webdataset|hf_images|synthetic_images)."""

    size: int = 32
    """Side in pixels of the square RGB images written (shorter side resized to it with bicubic
    resampling, then center-cropped); pretrain vision.image_size must equal it."""
    samples_per_shard: int = 2000
    """Samples per tar shard; a new shard_NNNNN.tar starts after this many."""
    image_token: str = "<image>"
    """The piece that marks the image position (pretrain vision.image_token); a trained
    tokenizer must reserve it (tokenizer.reserved_tokens), a given tokenizer.model must hold it."""


@dataclass
class SliceConfig:
    """Which part of the shards this process builds (Slurm job arrays)."""

    index: int | None = None
    """This job's slice, 0-based. null: $SLURM_ARRAY_TASK_ID, else 0."""
    count: int | None = None
    """Number of slices. null: $SLURM_ARRAY_TASK_COUNT, else 1. With count > 1 no manifest is
    written; run `stage=finalize` once every slice finished."""

    def resolved(self) -> tuple[int, int]:
        """(index, count) after applying the Slurm environment defaults."""
        count = self.count
        if count is None:
            count = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1"))
        index = self.index
        if index is None:
            task_id = os.environ.get("SLURM_ARRAY_TASK_ID")
            min_id = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            index = int(task_id) - min_id if task_id is not None else 0
        return index, count


@dataclass
class PrepareConfig:
    """Root config of `python -m data_pipeline`."""

    input: InputConfig = field(default_factory=InputConfig)
    """Where the documents come from (group `input=`: stdlib_code, files, hf)."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The SentencePiece model (group `tokenizer=`: bpe_8k, bpe_32k, pretrained)."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Output directory and sharding."""
    slice: SliceConfig = field(default_factory=SliceConfig)
    """The part of the shards this job builds (Slurm arrays)."""
    images: ImageConfig = field(default_factory=ImageConfig)
    """Image size, shard size and image token of image-text data."""
    workers: int = 1
    """Tokenizing processes. The output bytes do not depend on it."""
    batch_bytes: int = 1 << 20
    """Raw bytes of documents sent to a worker per task (bounds memory with 2*workers in flight)."""
    stage: str = "all"
    """all: tokenizer + shards (+ manifest when slice.count=1); tokenizer: only train/copy the
    tokenizer; finalize: verify every shard and write manifest.json (after a Slurm array)."""
    progress: bool = True
    """Show tqdm progress bars on stderr."""

    def output_dir(self) -> Path:
        """The output directory, resolved; relative paths (and the default
        `checkpoints/data/<input.name>`, where `python -m pretrain` looks by default) are
        relative to the working directory, never to where the package is installed."""
        name = self.input.name
        if self.input.is_images() and self.input.subset == "heldout":
            name += "_heldout"  # never the train split's dir
        chosen = self.output.dir or str(Path("checkpoints") / "data" / name)
        return Path(chosen).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the manifest."""
        return asdict(self)


def _check(cond: bool, key: str, value: object, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate(cfg: PrepareConfig) -> None:
    """Reject bad settings before any work starts; messages name the override key."""
    inp, tok, out = cfg.input, cfg.tokenizer, cfg.output
    if inp.name == "stdlib_code" and inp.paths != ["stdlib:"]:
        raise ConfigError(
            f"input.paths={inp.paths} replaces the embedded corpus but input=stdlib_code is "
            "selected (its include/format settings are for .py files): drop `input=stdlib_code` "
            "(input.paths alone reads your files as input=files does), or use input=hf."
        )
    if inp.format != "synthetic_images":
        why = "give at least one file, glob or folder"
        _check(bool(inp.paths), "input.paths", inp.paths, why)
    _check(inp.format in FORMATS, "input.format", inp.format, f"choose one of {FORMATS}")
    _check(inp.on_error in ("skip", "fail"), "input.on_error", inp.on_error, "use skip or fail")
    _check(inp.text_unit in ("file", "line"), "input.text_unit", inp.text_unit, "use file|line")
    _check(bool(inp.text_key), "input.text_key", inp.text_key, "must be a non-empty field name")
    _check(inp.max_examples >= 0, "input.max_examples", inp.max_examples, "must be >= 0")
    _validate_instruct(inp)
    _check(tok.type in ("bpe", "unigram"), "tokenizer.type", tok.type, "use bpe or unigram")
    _check(tok.encoder in ENCODERS, "tokenizer.encoder", tok.encoder, f"choose one of {ENCODERS}")
    if tok.model is None:
        _check(tok.vocab_size >= 300, "tokenizer.vocab_size", tok.vocab_size, "must be >= 300")
        _check(tok.sample_bytes > 0, "tokenizer.sample_bytes", tok.sample_bytes, "must be > 0")
        _check(tok.train_threads >= 1, "tokenizer.train_threads", tok.train_threads, "must be >= 1")
        coverage = tok.character_coverage
        why = "SentencePiece needs 0.98 <= coverage <= 1.0 (0.9995 is Llama's)"
        _check(0.98 <= coverage <= 1.0, "tokenizer.character_coverage", coverage, why)
        _validate_reserved(tok.reserved_tokens, inp.special_tokens)
    elif not Path(tok.model).expanduser().is_file():
        raise ConfigError(
            f"tokenizer.model={tok.model!r}: no such file. Give the path of a SentencePiece "
            ".model file, or tokenizer.model=null to train one on the input."
        )
    _check(tok.verify_docs >= 0, "tokenizer.verify_docs", tok.verify_docs, "must be >= 0")
    _check(out.num_shards >= 0, "output.num_shards", out.num_shards, "must be >= 0 (0 = auto)")
    _check(out.shard_input_mb > 0, "output.shard_input_mb", out.shard_input_mb, "must be > 0")
    _check(cfg.workers >= 1, "workers", cfg.workers, "must be >= 1")
    _check(cfg.batch_bytes >= 1024, "batch_bytes", cfg.batch_bytes, "must be >= 1024")
    _check(cfg.stage in STAGES, "stage", cfg.stage, f"choose one of {STAGES}")
    index, count = cfg.slice.resolved()
    _check(count >= 1, "slice.count", count, "must be >= 1 (or set SLURM_ARRAY_TASK_COUNT)")
    _check(0 <= index < count, "slice.index", index, f"must be in [0, slice.count={count})")
    if out.overwrite and count > 1 and cfg.stage == "all":
        raise ConfigError(
            f"output.overwrite=true with slice.count={count}: every array task would delete the "
            "shards of the others. Clear the dir once before the array (e.g. the stage=tokenizer "
            "step with output.overwrite=true) and run the tasks without it."
        )


BASIC_PIECES = ("<unk>", "<s>", "</s>", "<pad>")
"""SentencePiece's own special pieces (ids 0-3 of a trained model)."""


def _validate_reserved(reserved: list[str], user_defined: list[str]) -> None:
    key = "tokenizer.reserved_tokens"
    for token in reserved:
        _check(
            bool(token) and not any(c.isspace() for c in token),
            key,
            reserved,
            f"{token!r}: a reserved token must be non-empty and hold no whitespace",
        )
        _check(
            token not in BASIC_PIECES,
            key,
            reserved,
            f"{token!r} is one of SentencePiece's own pieces {BASIC_PIECES}; remove it",
        )
        _check(
            token not in user_defined,
            key,
            reserved,
            f"{token!r} is also in input.special_tokens; a piece is one or the other",
        )
    _check(len(set(reserved)) == len(reserved), key, reserved, "lists a token twice")


def _validate_instruct(inp: InputConfig) -> None:
    """The instruction-data keys (input.format=chat|prompt_completion, subsets, python_pairs)."""
    _check(
        inp.subset in ("all", "train", "heldout"), "input.subset", inp.subset, "all|train|heldout"
    )
    fraction = inp.heldout_fraction
    _check(0.0 <= fraction <= 1.0, "input.heldout_fraction", fraction, "must be in [0, 1]")
    if inp.python_pairs:
        why = "Python functions become prompt/completion pairs: set input.format=prompt_completion"
        _check(inp.format == "prompt_completion", "input.format", inp.format, why)
    if not inp.is_instruct():
        return
    _check(inp.max_tokens >= 2, "input.max_tokens", inp.max_tokens, "must be >= 2")
    _check(inp.overlong in ("truncate", "drop"), "input.overlong", inp.overlong, "truncate|drop")
    for key in ("messages_key", "prompt_key", "completion_key"):
        value = getattr(inp, key)
        _check(bool(value), f"input.{key}", value, "must be a non-empty field name")
    for token in inp.special_tokens:
        _check(bool(token.strip()), "input.special_tokens", inp.special_tokens, "empty token")


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The config keys (or group names) that Hydra command-line overrides set or delete.

    `+input.x=1`, `++input.x=1` and `~input.x` all give `input.x`; `input=files` gives `input`.
    """
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].strip().lstrip("~+")
        keys.add(key.split("@", 1)[0])  # `input@pkg=files` chooses the group `input` too
    return keys


def input_for_overrides(inp: InputConfig, overrides: Iterable[str]) -> InputConfig:
    """`inp`, or the `input=files` preset when input.paths is given without an `input=` choice.

    The embedded corpus (input=stdlib_code, the default group) applies only when no input is
    given: `input.paths=[corpus.jsonl]` alone reads those paths exactly as `input=files` would
    (name, format=auto, include/exclude of that preset), while every other input.* key set on the
    command line (e.g. input.format=text) keeps its value. An explicit `input=...` is kept as is.
    """
    keys = override_keys(overrides)
    if "input.paths" not in keys or "input" in keys:
        return inp
    explicit = {key.removeprefix("input.") for key in keys if key.startswith("input.")}
    preset = InputConfig()  # conf/input/files.yaml sets exactly the schema defaults
    values = {f.name: getattr(inp if f.name in explicit else preset, f.name) for f in fields(inp)}
    return InputConfig(**values)


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (called by __main__ only)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_prepare", node=PrepareConfig)
    cs.store(group="input", name="base_input", node=InputConfig)
    cs.store(group="tokenizer", name="base_tokenizer", node=TokenizerConfig)
