"""A full output disk (a real small tmpfs): said as such, exit 74, the rest kept, resumable."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from dp_helpers import make_cfg, pretrained_cli_args, run_cli, tmpfs, write_jsonl

from data_pipeline.errors import EXIT_DISK_FULL, DiskFullError
from data_pipeline.prepare import run_prepare
from data_pipeline.tokenizer import sha256_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, texts):
    """~3 MB of JSONL: its shards need about 2.5 MB, more than the 1 MiB disk below."""
    return write_jsonl(tmp_path_factory.mktemp("full") / "corpus.jsonl", texts * 10)


def _args(corpus, model, out):
    extra = ("output.num_shards=8", "workers=2", "batch_bytes=65536")
    return pretrained_cli_args(corpus, model, out, *extra)


def _kept_shards_verify(out):
    """Every shard with a done record matches it; return their names."""
    names = []
    for done in sorted(out.glob("shard_*.done.json")):
        record = json.loads(done.read_text())
        for suffix in ("bin", "idx"):
            assert sha256_file(out / f"{record['prefix']}.{suffix}") == record[f"{suffix}_sha256"]
        names.append(record["prefix"])
    return names


def test_full_disk_while_writing_shards_then_resume(tmp_path, corpus, sp_model):
    with tmpfs(tmp_path / "disk", "1m") as out:
        proc = run_cli(*_args(corpus, sp_model, out), timeout=300)
        assert proc.returncode == EXIT_DISK_FULL, proc.stderr
        assert "DiskFullError: no space left on device (disk full) while writing shard" in (
            proc.stderr
        )
        assert f"{out}/shard_0000" in proc.stderr and "free on that file system" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (out / "manifest.json").exists()
        assert [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name[0] == "."] == []
        kept = _kept_shards_verify(out)
        assert 1 <= len(kept) < 8, kept
        mtimes = {p: (out / f"{p}.bin").stat().st_mtime_ns for p in kept}

        subprocess.run(["mount", "-o", "remount,size=8m", str(out)], check=True)
        rerun = run_cli(*_args(corpus, sp_model, out), timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert all(f"{p}: reusing (checksums verified)" in rerun.stderr for p in kept)
        assert {p: (out / f"{p}.bin").stat().st_mtime_ns for p in kept} == mtimes
        assert run_cli("data_pipeline.inspect", str(out)).returncode == 0


def test_full_disk_while_writing_the_tokenizer(tmp_path, corpus_jsonl, sp_model):
    with tmpfs(tmp_path / "disk", "8k") as out:  # the lock record fits, the 7 KB model not
        with pytest.raises(DiskFullError, match=rf"while writing the file {out}/tokenizer.model"):
            run_prepare(make_cfg([corpus_jsonl], out, sp_model))
        assert sorted(p.name for p in out.iterdir()) == []


def test_full_disk_while_writing_the_manifest(tmp_path, corpus_jsonl, sp_model):
    with tmpfs(tmp_path / "disk", "2m") as out:
        cfg = make_cfg([corpus_jsonl], out, sp_model, output__num_shards=2)
        run_prepare(cfg)
        shards = {p.name: p.read_bytes() for p in out.glob("shard_*")}
        (out / "manifest.json").unlink()
        free = shutil.disk_usage(out).free
        (out / "filler").write_bytes(b"\0" * (free - 4096))  # one page left: the lock record's
        with pytest.raises(DiskFullError, match=rf"writing the file {out}/manifest.json: \d+"):
            run_prepare(cfg)
        assert not (out / "manifest.json").exists()
        assert {p.name: p.read_bytes() for p in out.glob("shard_*")} == shards
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
        (out / "filler").unlink()
        run_prepare(cfg)
        assert (out / "manifest.json").is_file()
