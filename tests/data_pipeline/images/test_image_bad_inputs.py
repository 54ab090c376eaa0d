"""Bad images and captions (skip and fail modes), refused tokenizers and settings, and output dirs
of failed runs that never look complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.config import TokenizerConfig
from data_pipeline.errors import ConfigError, DataError, OutputError
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import train_model
from images.imgdata import caption, encoded, image_cfg, make_image, synthetic_cfg, write_folder

REPO = Path(__file__).resolve().parents[3]
GOOD = 6
BAD_LINE = 4  # the bad record is line 4 of the JSONL (between good ones)


def _bad_record(reason: str, folder: Path) -> str:
    """The JSONL line of a record that is skipped for `reason` (files made in `folder`)."""
    noise = encoded(make_image(5).resize((64, 64)), "PNG")
    files = {
        "truncated_image": noise[: len(noise) * 6 // 10],
        "not_an_image": b"plain text, not a picture\n",
        "empty_image": b"",
    }
    if reason in files:
        (folder / f"{reason}.png").write_bytes(files[reason])
    record = {"image": f"imgs/{reason}.png", "text": "a caption"}
    if reason == "empty_caption":
        record = {"image": "imgs/img_000.png", "text": "  \n"}
    elif reason == "missing_caption":
        record = {"image": "imgs/img_000.png"}
    elif reason == "bad_record":
        return '{"image": "imgs/img_000.png", "text": \n'
    return json.dumps(record) + "\n"


def _jsonl_with(tmp_path: Path, reason: str) -> Path:
    pairs = write_folder(tmp_path / "imgs", GOOD)
    lines = [json.dumps({"image": f"imgs/{p.name}", "text": c}) + "\n" for p, c in pairs]
    lines.insert(BAD_LINE - 1, _bad_record(reason, tmp_path / "imgs"))
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(lines))
    return path


REASONS = [
    "truncated_image",
    "not_an_image",
    "empty_image",
    "missing_image",
    "empty_caption",
    "missing_caption",
    "bad_record",
]


@pytest.mark.parametrize("reason", REASONS)
def test_bad_sample_skipped_and_counted(tmp_path: Path, reason: str) -> None:
    jsonl = _jsonl_with(tmp_path, reason)
    out = run_prepare(image_cfg([jsonl], "image_text", tmp_path / "out"))
    block = json.loads((out / "manifest.json").read_text())["image_text"]
    assert block["skipped"] == {reason: 1}
    assert block["skip_examples"] == {reason: [f"{jsonl}:{BAD_LINE}"]}
    assert block["num_samples"] == GOOD


@pytest.mark.parametrize("reason", REASONS)
def test_bad_sample_fails_naming_the_file(tmp_path: Path, reason: str) -> None:
    jsonl = _jsonl_with(tmp_path, reason)
    cfg = image_cfg([jsonl], "image_text", tmp_path / "out", on_error="fail")
    cfg.images.samples_per_shard = 2  # the first shard is complete when the bad line comes
    with pytest.raises(DataError, match=rf"{jsonl}:{BAD_LINE}: {reason} .*input.on_error=skip"):
        run_prepare(cfg)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "manifest.json" not in names  # a failed run never looks complete
    assert not [n for n in names if ".tmp-" in n]  # the unfinished shard is removed


def test_folder_image_without_txt_and_webdataset_key_without_caption(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "img_001.txt").unlink()
    out = run_prepare(image_cfg([tmp_path / "imgs"], "image_text", tmp_path / "out"))
    block = json.loads((out / "manifest.json").read_text())["image_text"]
    assert block["skipped"] == {"missing_caption": 1} and block["num_samples"] == 2
    assert block["skip_examples"]["missing_caption"] == [str(tmp_path / "imgs" / "img_001.png")]


def test_failed_rerun_removes_the_old_manifest(tmp_path: Path) -> None:
    jsonl = _jsonl_with(tmp_path, "not_an_image")
    out = run_prepare(image_cfg([jsonl], "image_text", tmp_path / "out"))
    assert (out / "manifest.json").is_file()
    with pytest.raises(DataError):
        run_prepare(image_cfg([jsonl], "image_text", out, on_error="fail"))
    assert not (out / "manifest.json").exists()


def test_cli_fail_mode_exits_1_naming_the_file(tmp_path: Path) -> None:
    jsonl = _jsonl_with(tmp_path, "empty_image")
    args = [f"input.paths=[{jsonl}]", "input.format=image_text", "input.on_error=fail"]
    args += [f"output.dir={tmp_path / 'out'}", "tokenizer.vocab_size=300", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "data_pipeline", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert f"DataError: {jsonl}:{BAD_LINE}: empty_image" in result.stderr


def test_tokenizer_without_image_piece_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "no_image.model"
    texts = [caption(i) for i in range(50)]
    model.write_bytes(train_model(TokenizerConfig(vocab_size=300, reserved_tokens=[]), texts))
    jsonl = _jsonl_with(tmp_path, "not_an_image")
    cfg = image_cfg([jsonl], "image_text", tmp_path / "out", model=model)
    with pytest.raises(ConfigError, match=r"tokenizer.model=.*no_image.model.* no '<image>' piece"):
        run_prepare(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_untrainable_vocab_size_names_the_key(tmp_path: Path) -> None:
    cfg = synthetic_cfg(tmp_path / "out", 20, "train")
    cfg.tokenizer.vocab_size = 8192
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size=8192 is too large .* at most \d+"):
        run_prepare(cfg)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: setattr(c.images, "size", 4), r"images.size=4: must be >= 8"),
        (lambda c: setattr(c.images, "samples_per_shard", 0), r"images.samples_per_shard=0"),
        (lambda c: setattr(c.input, "subset", "all"), r"input.subset='all'.*train or heldout"),
        (lambda c: setattr(c.output, "num_shards", 3), r"output.num_shards=3.*samples_per_shard"),
        (lambda c: setattr(c.input, "synthetic_count", 0), r"input.synthetic_count=0"),
        (lambda c: setattr(c.tokenizer, "reserved_tokens", ["<mask>"]), r"must reserve"),
        (lambda c: setattr(c.input, "synthetic_seed", "x"), r"seed='x'"),
        (lambda c: setattr(c.input, "paths", ["a.jsonl"]), r"input.paths=\['a.jsonl'\]"),
    ],
)
def test_bad_settings_refused_before_writing(tmp_path: Path, change, message: str) -> None:
    cfg = synthetic_cfg(tmp_path / "out", 9, "train")
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        run_prepare(cfg)
    assert not (tmp_path / "out").exists()


def test_text_dir_and_other_subset_refused_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard_00000.bin").write_bytes(b"text")
    cfg = synthetic_cfg(out, 30, "heldout")
    with pytest.raises(OutputError, match=r"holds text data .*output.overwrite=true"):
        run_prepare(cfg)
    cfg.output.overwrite = True
    run_prepare(cfg)
    assert not (out / "shard_00000.bin").exists()
    cfg.input.subset, cfg.output.overwrite = "train", False
    with pytest.raises(OutputError, match=r"holds the 'heldout' synthetic subset"):
        run_prepare(cfg)


def test_rerun_with_fewer_shards_removes_stale_ones(tmp_path: Path) -> None:
    cfg = synthetic_cfg(tmp_path / "out", 30, "train")
    cfg.images.samples_per_shard = 10
    run_prepare(cfg)
    assert len(list((tmp_path / "out").glob("shard_*.tar"))) == 3
    cfg.images.samples_per_shard = 20
    run_prepare(cfg)
    names = sorted(p.name for p in (tmp_path / "out").glob("shard_*"))
    assert names == [
        "shard_00000.idx.npy",
        "shard_00000.tar",
        "shard_00001.idx.npy",
        "shard_00001.tar",
    ]
