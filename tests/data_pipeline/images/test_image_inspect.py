"""`python -m data_pipeline.inspect` on an image-text directory: verifies, prints the figures and
captions read through the offset index, and reports damage with exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_pipeline.inspect import main as inspect_main


def test_inspect_image_text_dir(image_text_heldout: Path, capsys):
    out = image_text_heldout
    assert inspect_main([str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    count = manifest["image_text"]["num_samples"]
    assert stats["ok"] and stats["kind"] == "image_text" and stats["samples"] == count
    manifest = json.loads((out / "manifest.json").read_text())
    assert stats["caption_tokens"] == manifest["image_text"]["num_caption_tokens"]

    assert inspect_main([str(out), "--samples", str(count)]) == 0
    shown = capsys.readouterr().out
    import tarfile

    with tarfile.open(out / "shard_00000.tar") as tar:
        texts = [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    assert len(texts) == count and all(text in shown for text in texts)


def test_inspect_reports_a_damaged_shard(image_text_heldout: Path, tmp_path: Path, capsys):
    out = tmp_path / "img"
    shutil.copytree(image_text_heldout, out)
    tar = out / "shard_00000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert inspect_main([str(out), "--json"]) == 1
    assert "shard_00000.tar: sha256 differs" in capsys.readouterr().out
