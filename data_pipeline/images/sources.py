"""Reading image-caption pairs: JSONL files, folders, webdataset tars, HF datasets, synthetic.

Every reader yields `RawSample`s in a fixed order (inputs in input.paths order, folders sorted by
relative path, tar members in archive order). A sample carries its image undecoded (a path or
bytes) or, from the generator, as a PIL image; problems found while reading (no caption, a bad
JSONL line) are set as `problem` and counted by the job like decoding failures.
"""

from __future__ import annotations

import glob
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from data_pipeline.config import InputConfig
from data_pipeline.errors import ConfigError
from data_pipeline.fields import MISSING, lookup

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
"""Image members of a webdataset sample and image files of a folder."""


@dataclass
class RawSample:
    """One image-caption pair as read, before decoding."""

    label: str
    """Where it comes from, for skip examples and errors: a file, `file:line`, `tar:key`."""
    caption: str | None = None
    """The caption text (None when missing)."""
    path: Path | None = None
    """The image file (folder and JSONL inputs)."""
    data: bytes | None = None
    """The encoded image (tar members, HF {bytes})."""
    image: Image.Image | None = None
    """An already decoded image (the generator)."""
    problem: tuple[str, str] | None = None
    """(skip reason, detail) found while reading: missing_caption, bad_record, missing_image."""


@dataclass(frozen=True)
class ImageInput:
    """One entry of the inputs: a JSONL file, a folder, a tar or an HF dataset."""

    path: Path
    """The file or folder."""
    kind: str
    """jsonl | folder | webdataset | hf."""

    def size(self) -> int:
        """Bytes on disk of a file (0 for folders and datasets), for the manifest `inputs`."""
        return self.path.stat().st_size if self.path.is_file() else 0


def _expand(entry: str) -> list[Path]:
    """An existing path as is, else the sorted matches of a glob; ConfigError when none."""
    path = Path(entry).expanduser()
    if path.exists():
        return [path.resolve()]
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise ConfigError(f"input.paths: {entry!r} matches no file or folder")
    return [Path(m).resolve() for m in matches]


def list_inputs(inp: InputConfig) -> list[ImageInput]:
    """The inputs of an image format in order (none for synthetic_images)."""
    if inp.format == "synthetic_images":
        return []
    found = []
    for entry in inp.paths:
        for path in _expand(entry):
            if inp.format == "hf_images":
                _check_columns(path, inp)
                found.append(ImageInput(path, "hf"))
            elif inp.format == "webdataset":
                tars = sorted(path.rglob("*.tar")) if path.is_dir() else [path]
                found += [ImageInput(t, "webdataset") for t in tars]
            else:
                found.append(ImageInput(path, "folder" if path.is_dir() else "jsonl"))
    if not found:
        raise ConfigError(f"input.paths={inp.paths}: no input found (no .tar in those folders)")
    return found


def source_name(inp: InputConfig, inputs: list[ImageInput]) -> str:
    """The manifest's image_text.source: synthetic | jsonl | folder | webdataset | hf (or
    `jsonl+folder` for a mix)."""
    if inp.format == "synthetic_images":
        return "synthetic"
    return "+".join(sorted({i.kind for i in inputs}))


def _caption(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _read_jsonl(path: Path, inp: InputConfig) -> Iterator[RawSample]:
    """{"image": path relative to the file's folder, "text": caption} per line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            label = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as e:
                yield RawSample(label, problem=("bad_record", f"not JSON ({e})"))
                continue
            image = lookup(record, inp.image_key) if isinstance(record, dict) else MISSING
            if not isinstance(image, str) or not image:
                why = f"no string field {inp.image_key!r} (input.image_key)"
                yield RawSample(label, problem=("bad_record", why))
                continue
            caption = _caption(lookup(record, inp.text_key))
            yield RawSample(label, caption, path=path.parent / image)


def _read_folder(folder: Path, inp: InputConfig) -> Iterator[RawSample]:
    """Image files (sorted by relative path) with a caption in the same-stem .txt next to them."""
    images = [
        p for p in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]  # fmt: skip
    for path in images:
        text = path.with_suffix(".txt")
        if not text.is_file():
            yield RawSample(str(path), path=path, problem=("missing_caption", f"no {text.name}"))
            continue
        yield RawSample(str(path), text.read_text(encoding="utf-8", errors="replace"), path=path)


def _tar_key(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member: the webdataset key is the path up to the first dot of
    the file name (`a/b.c.png` -> `a/b`, `c.png`)."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _webdataset_sample(tar: Path, key: str, members: dict[str, bytes], text_key: str) -> RawSample:
    label = f"{tar}:{key}"
    data = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
    if data is None:
        return RawSample(label, problem=("missing_image", f"no image member of key {key}"))
    if "txt" in members:
        return RawSample(label, members["txt"].decode("utf-8", "replace"), data=data)
    if "json" in members:
        try:
            caption = _caption(lookup(json.loads(members["json"]), text_key))
        except ValueError as e:
            return RawSample(label, data=data, problem=("bad_record", f"{key}.json: {e}"))
        return RawSample(label, caption, data=data)
    return RawSample(label, data=data, problem=("missing_caption", f"no {key}.txt or .json"))


def _read_tar(path: Path, inp: InputConfig) -> Iterator[RawSample]:
    """Consecutive members sharing a key form one sample (webdataset convention)."""
    key, members = None, {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name_key, ext = _tar_key(member.name)
                if name_key != key and key is not None:
                    yield _webdataset_sample(path, key, members, inp.text_key)
                    members = {}
                key = name_key
                f = tar.extractfile(member)
                members[ext] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        yield RawSample(str(path), problem=("bad_archive", f"unreadable tar ({e})"))
    if key is not None:
        yield _webdataset_sample(path, key, members, inp.text_key)


def _image_fields(value: Any, base: Path) -> dict[str, Any]:
    """RawSample image fields of an HF image cell: PIL image, {bytes, path}, or a path."""
    if isinstance(value, Image.Image):
        return {"image": value}
    if isinstance(value, dict) and value.get("bytes"):
        return {"data": value["bytes"]}
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        return {"path": base / path}
    return {"problem": ("missing_image", "no image in the row")}


def _check_columns(path: Path, inp: InputConfig) -> Any:
    """The dataset at `path`; ConfigError naming the key when a column is missing."""
    from data_pipeline.hf import open_hf_dataset

    ds = open_hf_dataset(str(path), inp.hf_split)
    for key in ("image_key", "text_key"):
        column = getattr(inp, key)
        if column not in ds.column_names:
            raise ConfigError(
                f"input.{key}={column!r}: no such column in {path} (its columns: "
                f"{ds.column_names}); set input.image_key and input.text_key"
            )
    return ds


def _read_hf(path: Path, inp: InputConfig) -> Iterator[RawSample]:
    """Rows of a local HF dataset; an Image column is read undecoded (bytes), so a broken image
    is a counted skip, not an exception inside `datasets`."""
    import datasets

    ds = _check_columns(path, inp)
    if isinstance(ds.features[inp.image_key], datasets.Image):
        ds = ds.cast_column(inp.image_key, datasets.Image(decode=False))
    for row, record in enumerate(ds):
        fields = _image_fields(record[inp.image_key], path)
        yield RawSample(f"{path}:{row}", _caption(record[inp.text_key]), **fields)


def _read_synthetic(inp: InputConfig, size: int) -> Iterator[RawSample]:
    from data_pipeline.images.synthetic import synthetic_samples

    for sample in synthetic_samples(inp.synthetic_seed, inp.synthetic_count, size, inp.subset):
        yield RawSample(sample.key, sample.caption, image=sample.image)


READERS = {"jsonl": _read_jsonl, "folder": _read_folder, "webdataset": _read_tar, "hf": _read_hf}
"""The reader of each input kind."""


def iter_samples(inp: InputConfig, inputs: list[ImageInput], size: int) -> Iterator[RawSample]:
    """Every raw sample of the inputs, in order."""
    if inp.format == "synthetic_images":
        yield from _read_synthetic(inp, size)
        return
    for item in inputs:
        yield from READERS[item.kind](item.path, inp)
