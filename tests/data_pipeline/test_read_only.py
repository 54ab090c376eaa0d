"""A read-only output dir is refused at the start, naming it; read-only inputs are fine."""

from __future__ import annotations

import gzip
import json
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
from dp_helpers import make_cfg, read_only_view, run_cli, tmpfs

from data_pipeline.prepare import run_prepare


def test_read_only_output_dir_is_refused_at_the_start(tmp_path, corpus_jsonl, sp_model):
    with tmpfs(tmp_path / "ro", "1m") as out:
        (out / "old.txt").write_text("kept")
        subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
        for target in (out, out / "new_sub"):
            proc = run_cli(
                "data_pipeline",
                f"input.paths=[{corpus_jsonl}]",
                f"tokenizer.model={sp_model}",
                f"output.dir={target}",
                "progress=false",
            )
            assert proc.returncode == 2, proc.stderr
            assert f"output.dir={str(target)!r} cannot be used (Read-only file system)" in (
                proc.stderr
            )
            assert "Traceback" not in proc.stderr and "megatron" not in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"]


def test_read_only_inputs_work(tmp_path, texts, sp_model):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:5]))
    (src / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "zipped doc"}\n'))
    pq.write_table(pa.table({"text": ["a parquet doc", "another"]}), src / "c.parquet")
    (src / "sub" / "d.txt").write_text("a whole text file\n")
    with read_only_view(src, tmp_path / "ro") as ro:
        assert subprocess.run(["touch", str(ro / "x")], capture_output=True).returncode != 0
        out = run_prepare(make_cfg([ro], tmp_path / "out", sp_model))
        manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["num_docs"] == 5 + 1 + 2 + 1
    assert manifest["skipped"]["counts"] == {}
