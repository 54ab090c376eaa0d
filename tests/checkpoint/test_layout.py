"""Checkpoint directory layout: `latest` marker, completeness, torn saves, rotation (no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pretrain.checkpoint import layout


def _complete(run: Path, step: int) -> Path:
    path = run / layout.iter_dir_name(step)
    path.mkdir(parents=True)
    (path / layout.MCORE_META_FILE).write_text("{}")
    (path / layout.META_FILE).write_text("{}")
    return path


def test_names_and_steps(tmp_path: Path) -> None:
    assert layout.iter_dir_name(100) == "iter_0000100"
    assert layout.step_of(Path("iter_0000100")) == 100
    assert layout.step_of(Path("iter_0000100" + layout.TMP_SUFFIX)) is None
    assert layout.step_of(Path("latest")) is None


def test_latest_marker_is_atomic_and_wins(tmp_path: Path) -> None:
    _complete(tmp_path, 2)
    four = _complete(tmp_path, 4)
    layout.write_latest(tmp_path, "iter_0000002")
    assert (tmp_path / "latest").read_text() == "iter_0000002\n"
    assert layout.read_latest(tmp_path) == tmp_path / "iter_0000002"
    layout.write_latest(tmp_path, four.name)
    assert layout.read_latest(tmp_path) == four
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_torn_save_is_never_picked(tmp_path: Path) -> None:
    two = _complete(tmp_path, 2)
    layout.write_latest(tmp_path, two.name)
    torn = tmp_path / ("iter_0000004" + layout.TMP_SUFFIX)
    torn.mkdir()
    (torn / layout.MCORE_META_FILE).write_text("{}")
    (torn / layout.META_FILE).write_text("{}")
    half = tmp_path / "iter_0000006"  # final name but megatron's metadata.json missing
    half.mkdir()
    (half / layout.META_FILE).write_text("{}")
    assert layout.read_latest(tmp_path) == two
    assert layout.list_complete(tmp_path) == [two]
    (tmp_path / "latest").unlink()  # crash between rename and marker: newest complete one
    assert layout.read_latest(tmp_path) == two
    (tmp_path / "latest").write_text("iter_0000006\n")  # stale marker -> scan
    assert layout.read_latest(tmp_path) == two
    assert layout.remove_stale_tmp(tmp_path) == [torn]
    assert not torn.exists()


def test_rotate_keeps_newest_and_protected(tmp_path: Path) -> None:
    paths = [_complete(tmp_path, s) for s in (1, 2, 3, 4)]
    assert layout.rotate(tmp_path, 0) == []
    removed = layout.rotate(tmp_path, 2, protect=paths[0])
    assert removed == [paths[1]]
    assert [p.name for p in layout.list_complete(tmp_path)] == [
        "iter_0000001",
        "iter_0000003",
        "iter_0000004",
    ]
    assert not any(layout.TMP_SUFFIX in p.name for p in tmp_path.iterdir())


def test_resolve_load_path(tmp_path: Path) -> None:
    two = _complete(tmp_path, 2)
    assert layout.resolve_load_path(two) == two
    assert layout.resolve_load_path(tmp_path) == two  # a run dir -> its newest
    layout.write_latest(tmp_path, two.name)
    assert layout.resolve_load_path(tmp_path / "latest") == two  # the marker file itself
    torn = tmp_path / ("iter_0000004" + layout.TMP_SUFFIX)
    torn.mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        layout.resolve_load_path(torn)
    with pytest.raises(FileNotFoundError, match=r"checkpoint.load=\S*nope does not exist"):
        layout.resolve_load_path(tmp_path / "nope")
    (tmp_path / "notckpt").mkdir()  # a folder that is no checkpoint (e.g. a typo'd parent)
    with pytest.raises(FileNotFoundError, match=r"checkpoint=\S*notckpt has no complete"):
        layout.resolve_load_path(tmp_path / "notckpt", key="checkpoint")
    os.remove(two / layout.META_FILE)  # `latest` names a torn dir and nothing else is complete
    with pytest.raises(FileNotFoundError, match="has no complete checkpoint"):
        layout.resolve_load_path(tmp_path)


def test_preempted_marker_cli(tmp_path: Path) -> None:
    from pretrain import faults

    assert faults.main([str(tmp_path)]) == 0
    faults.write_marker(tmp_path, 9, str(tmp_path / "iter_0000009"))
    assert faults.main([str(tmp_path)]) == faults.EXIT_PREEMPTED == 75
    faults.clear_marker(tmp_path)
    assert faults.main([str(tmp_path)]) == 0
    assert faults.main([]) == 2
