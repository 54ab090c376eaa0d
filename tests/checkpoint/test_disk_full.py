"""A full disk while saving: a clear message naming the path (exit 74), the torn directory
removed, the previous checkpoint kept as `latest`; a read-only run.dir is refused before any
training step (exit 2). run.dir is a small tmpfs (needs `mount`, i.e. root; else skipped)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pretrain.checkpoint import verify
from pretrain.checkpoint.errors import EXIT_CHECKPOINT_WRITE
from tests._dist import read_metrics
from tests.checkpoint._common import single_process, small_overrides

pytestmark = pytest.mark.distributed


def _mount(where: Path, options: str) -> None:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs(options)` mounts a fresh tmpfs and returns its path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        _mount(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", str(where)], check=False)


def _no_torn(run: Path) -> bool:
    return not [p for p in run.iterdir() if p.name.endswith(".tmp-incomplete")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_checkpoint_that_does_not_fit(
    prepared_data: Path, tmpfs: Callable[[str], Path], mode: str
) -> None:
    run = tmpfs("size=1m") / "run"  # the small GPT's checkpoint is ~2 MB
    overrides = small_overrides(prepared_data, 4, f"checkpoint.async_save={mode == 'async'}")
    proc = single_process(overrides, run)
    assert proc.returncode == EXIT_CHECKPOINT_WRITE == 74, proc.stderr[-3000:]
    assert f"cannot write checkpoint {run}/iter_0000002.tmp-incomplete: the disk is full" in (
        proc.stderr
    )
    assert f"run.dir={run}" in proc.stderr and "Traceback" not in proc.stderr
    assert _no_torn(run) and not (run / "latest").exists()  # the space was given back


def test_the_previous_checkpoint_is_kept(prepared_data: Path, tmpfs: Callable[[str], Path]) -> None:
    run = tmpfs("size=3m") / "run"  # one ~2 MB checkpoint fits, a second does not
    overrides = small_overrides(prepared_data, 4, "checkpoint.keep_last=1")
    proc = single_process(overrides, run)
    assert proc.returncode == EXIT_CHECKPOINT_WRITE, proc.stderr[-3000:]
    line = next(x for x in proc.stderr.splitlines() if x.startswith("pretrain: "))
    assert "the disk is full: a checkpoint needs ~" in line and f"run.dir={run}" in line
    assert f"{run}/iter_0000002 is kept as `latest`" in line
    assert (run / "latest").read_text().strip() == "iter_0000002" and _no_torn(run)
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000002"]
    verify.inspect(run / "iter_0000002")
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]


@pytest.mark.parametrize("existing", [False, True])
def test_read_only_run_dir_is_refused_at_start(
    prepared_data: Path, tmpfs: Callable[[str], Path], existing: bool
) -> None:
    root = tmpfs("size=1m")
    run = root / "run"
    if existing:
        run.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    proc = single_process(small_overrides(prepared_data, 4), run)
    assert proc.returncode == 2, proc.stderr[-3000:]
    where = run if existing else root
    assert f"run.dir={run}: {where} is on a read-only file system" in proc.stderr
    assert "Traceback" not in proc.stderr and "step 1" not in proc.stdout
