"""Nothing on disk is trusted: the dataset index cache, re-prepared and damaged data, read-only
folders. Real data directories (the data-preparation job) and real training processes.

- megatron's index cache (`*.npy`, read by megatron with `allow_pickle=True`) is never
  unpickled: without data.cache_dir nothing is read from (or written into) the data directory;
  with it, a planted pickle is refused with exit 2 (`pretrain.index_cache`).
- A data directory re-prepared in place gets fresh indexes (cache folder keyed by content).
- A truncated `.bin` or `.idx` is a config error (exit 2) naming the file, before any step.
- A read-only data directory trains; a read-only run.dir is refused at start, naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pretrain.config import ConfigError
from pretrain.index_cache import check_npy
from pretrain.run_lock import RunLock
from tests._dist import RunResult, small_gpt_overrides
from tests.conftest import PREPARED_VOCAB_SIZE, stdlib_sample_files
from tests.pretrain._plain import run_plain

INDEX_NAMES = ("document_index", "sample_index", "shuffle_index")


class _CreatesMarker:
    """Unpickling this creates `marker` (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _train(data: Path, run_dir: Path, *extra: str, steps: int = 2, check: bool = True) -> RunResult:
    """One plain `python -m pretrain` process; `check`: it must succeed."""
    run = run_plain([*small_gpt_overrides(data, steps), *extra], run_dir)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def _plant_pickles(cache_dir: Path, marker: Path) -> list[Path]:
    """Replace every cached .npy by a pickle; also plant it where megatron looks by default.

    megatron-core (path_to_cache=None) reads `<shard prefix>/cache/GPTDataset_indices/
    <md5 of the description>-GPTDataset-<split>-*.npy`; the descriptions our cache saved give
    the same md5 once the class name is megatron's own.
    """
    payload = pickle.dumps(_CreatesMarker(marker))
    planted = sorted(cache_dir.rglob("*.npy"))
    for path in planted:
        path.write_bytes(payload)
    for desc in sorted(cache_dir.rglob("*-description.txt")):
        text = desc.read_text().replace('"class": "TrustedGPTDataset"', '"class": "GPTDataset"')
        info = json.loads(text)
        if "dataset_path" not in info:  # a BlendedDataset's (cached by the old code)
            continue
        folder = Path(info["dataset_path"]) / "cache" / "GPTDataset_indices"
        base = f"{hashlib.md5(text.encode()).hexdigest()}-GPTDataset-{info['index_split']}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{base}-description.txt").write_text(text)
        for name in INDEX_NAMES:
            (folder / f"{base}-{name}.npy").write_bytes(payload)
            planted.append(folder / f"{base}-{name}.npy")
    return planted


@pytest.mark.distributed
def test_cached_indexes_are_never_unpickled(prepared_data: Path, tmp_path: Path) -> None:
    data = _copy(prepared_data, tmp_path / "data")
    cache = tmp_path / "cache"
    marker = tmp_path / "MARKER"
    _train(data, tmp_path / "run1", f"data.cache_dir={cache}")
    assert any(cache.rglob("*.npy")), "data.cache_dir=... saved no index"
    planted = _plant_pickles(cache, marker)
    before = _files(data)

    no_cache = _train(data, tmp_path / "run2", check=False)
    assert not marker.exists(), "a cached .npy in the data directory was unpickled"
    assert no_cache.returncode == 0, no_cache.stderr[-3000:]
    assert _files(data) == before  # indexes built in memory: nothing written to the data

    cached = _train(data, tmp_path / "run3", f"data.cache_dir={cache}", check=False)
    assert not marker.exists(), "a .npy in data.cache_dir was unpickled"
    assert cached.returncode == 2, cached.stderr[-3000:]
    assert "data.cache_dir" in cached.stderr
    assert any(str(p) in cached.stderr for p in planted), cached.stderr[-2000:]
    assert not cached.losses()


def test_npy_header_check(tmp_path: Path) -> None:
    good = tmp_path / "x-sample_index.npy"
    np.save(good, np.zeros((4, 2), dtype=np.int64))
    check_npy(good, 2)
    with pytest.raises(ConfigError, match="shape"):
        check_npy(good, 1)
    objects = tmp_path / "o-document_index.npy"
    array = np.empty(1, dtype=object)
    array[0] = _CreatesMarker(tmp_path / "MARKER")
    np.save(objects, array, allow_pickle=True)
    with pytest.raises(ConfigError, match="object"):
        check_npy(objects, 1)
    raw = tmp_path / "r-document_index.npy"
    raw.write_bytes(pickle.dumps(_CreatesMarker(tmp_path / "MARKER")))
    with pytest.raises(ConfigError, match="not a plain .npy"):
        check_npy(raw, 1)
    assert not (tmp_path / "MARKER").exists()


def _prepare(out_dir: Path, files: list[str], tokenizer: Path | None = None) -> Path:
    """One shard of `files`; with `tokenizer`: re-prepared in place (output.overwrite=true)."""
    from data_pipeline.config import InputConfig, OutputConfig, PrepareConfig, TokenizerConfig
    from data_pipeline.prepare import run_prepare

    return run_prepare(
        PrepareConfig(
            input=InputConfig(name="stdlib", paths=files, format="text"),
            tokenizer=(
                TokenizerConfig(vocab_size=PREPARED_VOCAB_SIZE)
                if tokenizer is None
                else TokenizerConfig(model=str(tokenizer))
            ),
            output=OutputConfig(dir=str(out_dir), num_shards=1, overwrite=tokenizer is not None),
            workers=1,
            progress=False,
        )
    )


@pytest.mark.distributed
@pytest.mark.slow
def test_reprepared_data_dir_gets_fresh_indexes(tmp_path: Path) -> None:
    """Same shard name, tokenizer, split, seed and sample count: only the content differs (all
    documents train, so no split is disabled for the smaller data, which megatron would see)."""
    data = _prepare(tmp_path / "data", stdlib_sample_files())
    tokenizer = Path(shutil.copy(data / "tokenizer.model", tmp_path / "tokenizer.model"))
    cache = (f"data.cache_dir={tmp_path / 'cache'}", "data.split='100,0,0'")
    first = _train(data, tmp_path / "run1", *cache, steps=3)
    old_manifest = (data / "manifest.json").read_bytes()
    _prepare(data, stdlib_sample_files(300_000), tokenizer)  # different, smaller content
    assert (data / "manifest.json").read_bytes() != old_manifest
    second = _train(data, tmp_path / "run2", *cache, steps=3, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    fresh = _train(data, tmp_path / "run3", *cache[1:], steps=3)  # no cache: the reference
    assert second.losses() == fresh.losses()
    assert second.losses() != first.losses()


@pytest.mark.distributed
@pytest.mark.parametrize(("suffix", "cut"), [(".bin", 3), (".idx", 8)])
def test_truncated_shard_is_refused_at_start(
    prepared_data: Path, tmp_path: Path, suffix: str, cut: int
) -> None:
    data = _copy(prepared_data, tmp_path / "data")
    shard = sorted(data.glob(f"shard_*{suffix}"))[-1]
    os.truncate(shard, shard.stat().st_size - cut)
    run = _train(data, tmp_path / "run", check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    assert str(shard) in run.stderr
    assert "re-run data preparation" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()  # before any step (nothing written at all)


@contextlib.contextmanager
def read_only_copy(src: Path, work: Path) -> Iterator[Path]:
    """A read-only copy of `src`: a read-only bind mount (root ignores permission bits),
    else `chmod -R a-w`. Skips the test when the mount is not permitted."""
    copy = _copy(src, work / "rw")
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(copy)], check=True)
        try:
            yield copy
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)
        return
    target = work / "ro"
    target.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(copy), str(target)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"read-only bind mount not permitted: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.distributed
def test_read_only_data_dir_trains(prepared_data: Path, tmp_path: Path) -> None:
    with read_only_copy(prepared_data, tmp_path) as data:
        with pytest.raises(OSError):
            (data / "probe").write_text("x")
        run = _train(data, tmp_path / "run", check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        assert len(run.losses()) == 2


@pytest.mark.distributed
def test_read_only_run_dir_is_refused_at_start(prepared_data: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "run").mkdir(parents=True)
    with read_only_copy(empty, tmp_path) as parent:
        run_dir = parent / "run"
        run = _train(prepared_data, run_dir, check=False)
        assert run.returncode == 2, run.stderr[-3000:]
        assert f"run.dir={run_dir}" in run.stderr
        assert "Traceback" not in run.stderr
        with pytest.raises(ConfigError, match=f"run.dir={run_dir}: cannot create"):
            RunLock(run_dir).acquire()  # the lock, taken at setup, also names it
