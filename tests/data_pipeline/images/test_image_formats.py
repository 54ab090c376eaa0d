"""Every image-text input format end to end on tiny inputs, read back with tarfile and the idx."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from data_pipeline.images.process import preprocess
from data_pipeline.prepare import run_prepare
from images.imgdata import (
    caption,
    encoded,
    image_cfg,
    make_image,
    read_dir,
    write_folder,
    write_jsonl,
    write_tar,
)

N = 10


def _check_samples(out: Path, expected: list[tuple[Image.Image, str]]) -> list[dict]:
    """The dir holds exactly `expected` (source image, caption) in order: pixels equal the
    preprocessed source, ids are the SentencePiece encoding of the caption."""
    samples = read_dir(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert [s["caption"] for s in samples] == [c for _, c in expected]
    for sample, (source, text) in zip(samples, expected, strict=True):
        assert sample["image"].mode == "RGB" and sample["image"].size == (16, 16)
        assert np.array_equal(np.asarray(sample["image"]), np.asarray(preprocess(source, 16)))
        assert sample["ids"] == sp.encode(text) and sample["ids"]
    manifest = json.loads((out / "manifest.json").read_text())
    block = manifest["image_text"]
    assert manifest["kind"] == "image_text"
    assert block["num_caption_tokens"] == sum(len(s["ids"]) for s in samples)
    assert block["max_caption_tokens"] == max(len(s["ids"]) for s in samples)
    assert block["image_token_id"] == sp.piece_to_id("<image>") == 9
    assert manifest["tokenizer"]["special_tokens"]["<image>"] == 9
    for shard in block["shards"]:
        assert hashlib.sha256((out / shard["tar"]).read_bytes()).hexdigest() == shard["sha256"]
        index_sha = hashlib.sha256((out / shard["index"]).read_bytes()).hexdigest()
        assert index_sha == shard["index_sha256"]
    return samples


def test_jsonl_paths_relative_to_the_file(tmp_path: Path) -> None:
    pairs = write_folder(tmp_path / "data" / "imgs", N, ".jpg")
    jsonl = write_jsonl(
        tmp_path / "data" / "pairs.jsonl", [(f"imgs/{p.name}", c) for p, c in pairs]
    )
    out = run_prepare(image_cfg([jsonl], "image_text", tmp_path / "out"))
    _check_samples(out, [(Image.open(p), c) for p, c in pairs])
    block = json.loads((out / "manifest.json").read_text())["image_text"]
    assert block["source"] == "jsonl" and block["skipped"] == {} and block["synthetic"] is None


def test_folder_with_txt_captions_several_shards(tmp_path: Path) -> None:
    pairs = write_folder(tmp_path / "imgs", N)
    cfg = image_cfg([tmp_path / "imgs"], "image_text", tmp_path / "out")
    cfg.images.samples_per_shard = 4
    out = run_prepare(cfg)
    samples = _check_samples(out, [(Image.open(p), c) for p, c in pairs])
    block = json.loads((out / "manifest.json").read_text())["image_text"]
    assert [s["num_samples"] for s in block["shards"]] == [4, 4, 2]
    assert [s["tar"] for s in block["shards"]] == [f"shard_0000{i}.tar" for i in range(3)]
    assert [s["key"] for s in samples] == [f"{i:09d}" for i in range(N)]  # global index
    assert block["source"] == "folder"


def test_webdataset_txt_and_json_captions(tmp_path: Path) -> None:
    members, expected = [], []
    for i in range(N):
        img = make_image(i)
        if i % 2:
            members += [
                (f"s{i:03d}.png", encoded(img, "PNG")),
                (f"s{i:03d}.txt", caption(i).encode()),
            ]
        else:
            meta = json.dumps({"caption": caption(i), "other": 1}).encode()
            members += [(f"s{i:03d}.json", meta), (f"s{i:03d}.jpeg", encoded(img, "JPEG"))]
        source = Image.open(io.BytesIO(encoded(img, "PNG" if i % 2 else "JPEG")))
        expected.append((source, caption(i)))
    half = len(members) // 2
    tars = [
        write_tar(tmp_path / "a.tar", members[:half]),
        write_tar(tmp_path / "b.tar", members[half:]),
    ]
    out = run_prepare(image_cfg(tars, "webdataset", tmp_path / "out", text_key="caption"))
    _check_samples(out, expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_text"]["source"] == "webdataset"
    assert [i["path"] for i in manifest["inputs"]] == [str(t) for t in tars]


def test_hf_images_undecoded_so_a_broken_row_is_skipped(tmp_path: Path) -> None:
    import datasets

    images = [make_image(i) for i in range(N)]
    cells = [{"bytes": encoded(img, "PNG"), "path": None} for img in images]
    cells[3] = {"bytes": b"this is not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": cells, "caption": [caption(i) for i in range(N)]}, features=features
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    out = run_prepare(
        image_cfg([tmp_path / "hf"], "hf_images", tmp_path / "out", text_key="caption")
    )
    expected = [(img, caption(i)) for i, img in enumerate(images) if i != 3]
    _check_samples(out, expected)
    block = json.loads((out / "manifest.json").read_text())["image_text"]
    assert block["skipped"] == {"not_an_image": 1}
    assert block["skip_examples"] == {"not_an_image": [f"{tmp_path / 'hf'}:3"]}
    assert block["source"] == "hf"


def test_hf_images_missing_column_is_a_config_error(tmp_path: Path) -> None:
    import datasets

    from data_pipeline.errors import ConfigError

    datasets.Dataset.from_dict({"picture": ["a.png"], "text": ["x"]}).save_to_disk(
        str(tmp_path / "hf")
    )
    with pytest.raises(
        ConfigError, match=r"input.image_key='image': no such column in .*'picture'"
    ):
        run_prepare(image_cfg([tmp_path / "hf"], "hf_images", tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything is written
