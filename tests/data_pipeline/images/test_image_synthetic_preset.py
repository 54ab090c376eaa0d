"""`python -m data_pipeline input=synthetic_images` (train and held-out), the session fixtures,
and a given text tokenizer used as is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data_pipeline.images.synthetic import HELDOUT_PAIRS, synthetic_samples
from data_pipeline.prepare import run_prepare
from images.imgdata import read_dir, synthetic_cfg

REPO = Path(__file__).resolve().parents[3]


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "data_pipeline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_preset_defaults_compose() -> None:
    result = _cli(REPO, "input=synthetic_images", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for expected in ("  format: synthetic_images", "  subset: train", "  synthetic_count: 4000",
                     "  vocab_size: 512", "  size: 32", "  image_token: <image>"):  # fmt: skip
        assert expected in lines, result.stdout


def test_preset_train_then_heldout_with_the_train_tokenizer(tmp_path: Path) -> None:
    train = _cli(tmp_path, "input=synthetic_images", "input.synthetic_count=600", "progress=false")
    assert train.returncode == 0, train.stderr
    train_dir = tmp_path / "checkpoints" / "data" / "synthetic_images"
    model = train_dir / "tokenizer.model"
    args = ["input=synthetic_images", "input.subset=heldout", "input.synthetic_count=40"]
    held = _cli(tmp_path, *args, "tokenizer=pretrained", f"tokenizer.model={model}")
    assert held.returncode == 0, held.stderr
    held_dir = tmp_path / "checkpoints" / "data" / "synthetic_images_heldout"
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (train_dir, held_dir)]
    assert [m["image_text"]["num_samples"] for m in manifests] == [600, 40]
    assert [m["image_text"]["synthetic"]["subset"] for m in manifests] == ["train", "heldout"]
    assert manifests[0]["tokenizer"] == manifests[1]["tokenizer"]
    assert manifests[0]["tokenizer"]["vocab_size"] == 512
    assert (held_dir / "tokenizer.model").read_bytes() == model.read_bytes()


def test_fixtures_hold_the_generator_output(
    image_text_data: Path, image_text_heldout: Path
) -> None:
    for out, subset, count in (
        (image_text_data, "train", 600),
        (image_text_heldout, "heldout", 64),
    ):
        samples = read_dir(out)
        sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        expected = list(synthetic_samples(0, count, 32, subset))
        assert [s["caption"] for s in samples] == [e.caption for e in expected]
        assert [sp.decode(s["ids"]) for s in samples] == [e.caption for e in expected]
        for sample, generated in zip(samples, expected, strict=True):
            assert np.array_equal(np.asarray(sample["image"]), np.asarray(generated.image))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["image_text"]["image_size"] == 32
        assert manifest["image_text"]["synthetic"]["count"] == count
    heldout = [f"{c} {s}" for c, s in HELDOUT_PAIRS]
    captions = [s["caption"] for s in read_dir(image_text_heldout)]
    assert all(any(p in c or p + "s" in c for p in heldout) for c in captions)
    tokenizers = [
        (d / "tokenizer.model").read_bytes() for d in (image_text_data, image_text_heldout)
    ]
    assert tokenizers[0] == tokenizers[1]


def test_given_text_tokenizer_used_as_is(tmp_path: Path, sp_model: Path) -> None:
    cfg = synthetic_cfg(tmp_path / "out", 12)
    cfg.tokenizer.model = str(sp_model)  # trained by the text path: reserves <image>
    out = run_prepare(cfg)
    assert (out / "tokenizer.model").read_bytes() == sp_model.read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert manifest["image_text"]["image_token_id"] == sp.piece_to_id("<image>") == 9
    assert [s["ids"] for s in read_dir(out)] == [sp.encode(s["caption"]) for s in read_dir(out)]
