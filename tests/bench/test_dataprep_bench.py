"""bench/dataprep.py: a smoke run's BENCH_JSON line, its option checks, and the byte comparison
with Megatron-LM's output (bench/dataprep_megatron.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from tests.bench._run import REPO, bench_json, run_bench

BENCH = REPO / "bench" / "dataprep.py"
SMOKE = ["--limit-mb", "0.3", "--repeat", "1", "--vocab-size", "400", "--workers", "1"]


def _megatron_module():
    spec = importlib.util.spec_from_file_location(
        "dataprep_megatron", BENCH.parent / "dataprep_megatron.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_sane_figures():
    proc = run_bench("dataprep.py", *SMOKE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = bench_json(proc.stdout)
    assert result["bench"] == "dataprep" and result["repeat"] == 1
    assert result["megatron"] is None and result["ours_model_given"] is None
    assert 0.1 < result["input_mb"] <= 0.3 and result["docs"] > 0
    ours, ceiling = result["ours"], result["ceiling"]
    assert ours["wall_s"] > ours["shards_s"] > 0 and len(ours["walls_s"]) == 1
    assert ours["mb_s"] > 0 and ours["shard_mb_s"] > ours["mb_s"]
    assert ours["peak_mem_mb"] > 50  # python + torch + a worker, summed over the process tree
    assert ours["tokenizer_train_s"] > 0 and ours["megatron_import_s"] > 0
    assert 0 <= ours["megatron_wait_s"] <= ours["megatron_import_s"]
    assert ceiling["mb_s"] > 0 and ceiling["peak_mem_mb"] > 0 and ceiling["threads"] == 1
    assert "ours: python -m data_pipeline (end to end)" in proc.stdout
    assert "sentencepiece ceiling (1 threads)" in proc.stdout


def test_bad_megatron_dir_is_refused_before_any_run(tmp_path):
    proc = run_bench("dataprep.py", "--megatron", str(tmp_path), timeout=30)
    assert proc.returncode != 0 and "no tools/preprocess_data.py there" in proc.stderr
    assert "BENCH_JSON" not in proc.stdout


def _write(prefix: Path, docs: list[list[int]]) -> str:
    from data_pipeline.megatron_io import indexed_dataset

    module = indexed_dataset()
    builder = module.IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(np.array(doc, dtype=np.uint16), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_compare_with_megatron_output(tmp_path):
    bench = _megatron_module()
    docs = [[5, 6, 2], [7, 2], [8, 9, 10, 2]]
    ours = _write(tmp_path / "ours", docs)
    assert bench.idx_doc_lengths(f"{ours}.idx") == [3, 2, 4]
    assert bench.compare([ours], _write(tmp_path / "same", docs)) == (
        True,
        "identical .bin and .idx, 3 docs",
    )
    ok, why = bench.compare([ours], _write(tmp_path / "more", [*docs, [3, 2]]))
    assert not ok and "3 docs vs Megatron's 4" in why
    ok, why = bench.compare([ours], _write(tmp_path / "ids", [[5, 6, 2], [7, 2], [8, 9, 11, 2]]))
    assert not ok and "different ids" in why
    halves = [_write(tmp_path / "a", docs[:1]), _write(tmp_path / "b", docs[1:])]
    ok, why = bench.compare(halves, ours)
    assert not ok and "2 shards" in why


@pytest.mark.skipif(
    not os.environ.get("MEGATRON_LM_DIR"), reason="set MEGATRON_LM_DIR to a Megatron-LM checkout"
)
def test_megatron_output_is_identical():
    proc = run_bench(
        "dataprep.py", *SMOKE, "--megatron", os.environ["MEGATRON_LM_DIR"], timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = bench_json(proc.stdout)
    megatron, given = result["megatron"], result["ours_model_given"]
    assert megatron.get("identical") is True, megatron
    assert megatron["mb_s"] > 0 and megatron["peak_mem_mb"] > 0
    assert given["mb_s"] > 0 and given["tokenizer_train_s"] == 0
