"""Damaged checkpoints: checksums recorded at save; every kind of damage found, naming the file;
`resume=auto` falls back to the newest good checkpoint (the damaged one kept, set aside); an
explicit `checkpoint.load` and the export stop with a one-line error naming the file (exit 2)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.checkpoint import verify
from pretrain.checkpoint.errors import DamagedCheckpoint
from tests._dist import REPO_ROOT, read_metrics
from tests.checkpoint._common import export_hf, single_process, small_overrides
from tests.checkpoint._tamper import DAMAGE_KINDS, copy_run, damage


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("pretrain: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_saves_record_checksums_of_every_file(saved_run: Path) -> None:
    for ckpt in sorted(saved_run.glob("iter_*")):
        record = json.loads((ckpt / verify.CHECKSUMS_FILE).read_text())
        assert record["algorithm"] == "sha256"
        names = {p.name for p in ckpt.iterdir()} - {"checksums.json", "config.yaml"}
        assert set(record["files"]) == names and ".metadata" in names
        for name, entry in record["files"].items():
            data = (ckpt / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        verify.inspect(ckpt)


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_every_kind_of_damage_is_found(saved_run: Path, tmp_path: Path, kind: str) -> None:
    ckpt = tmp_path / "iter_0000006"
    shutil.copytree(saved_run / "iter_0000006", ckpt)
    name = damage(ckpt, kind)
    with pytest.raises(DamagedCheckpoint) as caught:
        verify.inspect(ckpt)
    assert caught.value.problems[0].startswith(f"{ckpt / name}: "), caught.value.problems
    assert "\n" not in str(caught.value)


def test_checksums_catch_what_sizes_cannot(saved_run: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "iter_0000004"
    shutil.copytree(saved_run / "iter_0000004", ckpt)
    damage(ckpt, "flipped_shard_byte")
    verify.inspect(ckpt, checksums=False)  # checkpoint.verify_checksums=false: sizes only
    with pytest.raises(DamagedCheckpoint, match="sha256 mismatch"):
        verify.inspect(ckpt, checksums=True)


@pytest.mark.distributed
def test_resume_falls_back_past_damaged_checkpoints(
    saved_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    run = copy_run(saved_run, tmp_path / "run")
    damage(run / "iter_0000006", "truncated_shard")
    damage(run / "iter_0000004", "invalid_mcore_metadata")
    proc = single_process(small_overrides(prepared_data, 8, "checkpoint.keep_last=2"), run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"{run}/iter_0000006/__0_0.distcp: truncated" in out
    assert f"{run}/iter_0000004/metadata.json: missing or invalid" in out
    assert f"loaded {run}/iter_0000002" in out
    # the damaged ones are kept under another name (never loaded, rotated or overwritten)
    assert os.path.getsize(run / "iter_0000006.damaged" / "__0_0.distcp") < os.path.getsize(
        saved_run / "iter_0000006" / "__0_0.distcp"
    )
    assert sorted(p.name for p in run.glob("iter_*")) == [
        "iter_0000004.damaged",
        "iter_0000006",
        "iter_0000006.damaged",
        "iter_0000008",
    ]
    assert (run / "latest").read_text().strip() == "iter_0000008"
    assert [r["step"] for r in read_metrics(run) if "loss" in r][-6:] == [3, 4, 5, 6, 7, 8]


@pytest.mark.distributed
def test_every_checkpoint_damaged_stops_and_renames_nothing(
    saved_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    run = copy_run(saved_run, tmp_path / "run")
    for step, kind in ((6, "missing_shard"), (4, "missing_common"), (2, "meta_without_keys")):
        damage(run / f"iter_{step:07d}", kind)
    proc = single_process(small_overrides(prepared_data, 8), run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"every checkpoint in run.dir={run} is damaged" in line
    for name in ("iter_0000006/__0_0.distcp", "iter_0000004/common.pt", "iter_0000002/meta.json"):
        assert f"{run}/{name}" in line
    assert sorted(p.name for p in run.glob("iter_*")) == [
        "iter_0000002",
        "iter_0000004",
        "iter_0000006",
    ]


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["flipped_shard_byte", "truncated_index"])
def test_explicit_load_of_a_damaged_checkpoint_exit_2(
    saved_run: Path, prepared_data: Path, tmp_path: Path, kind: str
) -> None:
    source = tmp_path / "source" / "iter_0000004"
    shutil.copytree(saved_run / "iter_0000004", source)
    name = damage(source, kind)
    fresh = tmp_path / "fresh"
    proc = single_process(small_overrides(prepared_data, 6, f"checkpoint.load={source}"), fresh)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert f"damaged checkpoint {source}: {source / name}: " in line
    assert source.is_dir() and not list(fresh.glob("iter_*"))  # explicit: never renamed


@pytest.mark.distributed
def test_export_of_a_damaged_checkpoint_exit_2(saved_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    script = Path(__file__).with_name("_export_damaged.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(saved_run / "iter_0000006"), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(DAMAGE_KINDS)
    for kind, result in results.items():
        assert result["rc"] == 2, (kind, result)
        assert len(result["errors"]) == 1 and result["file"] in result["errors"][0], result
        assert not (tmp_path / kind / "hf").exists()
    ckpt = tmp_path / "cli" / "iter_0000006"  # the command line itself: one line on stderr
    shutil.copytree(saved_run / "iter_0000006", ckpt)
    damage(ckpt, "truncated_common")
    cli = export_hf(ckpt, tmp_path / "cli" / "hf")
    assert cli.returncode == 2, cli.stderr[-3000:]
    errors = [line for line in cli.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{ckpt}/common.pt: truncated or corrupt" in errors[0]
    assert "Traceback" not in cli.stderr
