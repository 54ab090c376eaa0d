"""When checkpoints are taken: step interval, wall-clock interval, force, end of training."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrain import checkpoint
from pretrain.checkpoint import CheckpointError, Saver
from pretrain.checkpoint import loader as ckpt_loader
from pretrain.checkpoint import saver as ckpt_saver
from pretrain.config import PretrainConfig
from pretrain.state import TrainState


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return time.perf_counter()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    clock = _Clock()
    monkeypatch.setattr(ckpt_saver, "time", clock)
    context = SimpleNamespace(
        cfg=PretrainConfig(),
        state=TrainState(),
        run_dir=tmp_path,
        data_manifests=[],
        saved=[],
        clock=clock,
        saver=Saver(last_save_time=clock.now),
        dist=SimpleNamespace(is_rank0=True),
    )

    def fake_save(c: SimpleNamespace) -> Path:
        c.saved.append(c.state.step)
        c.saver.last_saved_step, c.saver.last_save_time = c.state.step, clock.now
        return tmp_path

    monkeypatch.setattr(ckpt_saver, "save_checkpoint", fake_save)
    return context


def _steps(ctx: SimpleNamespace, count: int, minutes_per_step: float = 0.0) -> None:
    for _ in range(count):
        ctx.state.step += 1
        ctx.clock.now += minutes_per_step * 60
        checkpoint.maybe_save(ctx)


def test_step_interval_and_end(ctx: SimpleNamespace) -> None:
    ctx.cfg.checkpoint.save_interval = 3
    _steps(ctx, 7)
    assert ctx.saved == [3, 6]
    checkpoint.finalize(ctx)  # save_at_end: step 7 not saved yet
    assert ctx.saved == [3, 6, 7]
    checkpoint.finalize(ctx)  # nothing new to save
    assert ctx.saved == [3, 6, 7]


def test_wall_clock_interval(ctx: SimpleNamespace) -> None:
    ctx.cfg.checkpoint.save_interval_minutes = 10.0
    ctx.saver.last_save_time = ctx.clock.now
    _steps(ctx, 9, minutes_per_step=4.0)  # due after 12, 24, 36 minutes
    assert ctx.saved == [3, 6, 9]


def test_force_and_no_double_save(ctx: SimpleNamespace) -> None:
    ctx.cfg.checkpoint.save_interval = 2
    ctx.cfg.checkpoint.save_at_end = False
    _steps(ctx, 2)
    assert checkpoint.maybe_save(ctx, force=True) is False  # step 2 is already saved
    _steps(ctx, 1)
    assert checkpoint.maybe_save(ctx, force=True) is True
    checkpoint.finalize(ctx)
    assert ctx.saved == [2, 3]


def test_choose_checkpoint(ctx: SimpleNamespace, tmp_path: Path) -> None:
    assert ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir) == (None, False)
    ctx.cfg.checkpoint.resume = "sometimes"
    with pytest.raises(CheckpointError, match="checkpoint.resume='sometimes'"):
        ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir)
    ctx.cfg.checkpoint.resume = "auto"
    ctx.cfg.checkpoint.load = str(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="missing does not exist"):
        ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir)
    other = tmp_path / "other" / "iter_0000005"
    other.mkdir(parents=True)
    (other / "metadata.json").write_text("{}")
    (other / "meta.json").write_text("{}")
    ctx.cfg.checkpoint.load, ctx.cfg.checkpoint.weights_only = str(other.parent), True
    assert ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir) == (other, True)
    own = tmp_path / "iter_0000002"  # the run's own checkpoint wins over checkpoint.load
    own.mkdir()
    (own / "metadata.json").write_text("{}")
    (own / "meta.json").write_text("{}")
    assert ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir) == (own, False)
    ctx.cfg.checkpoint.resume = "never"
    assert ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir) == (other, True)


def test_unwritable_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    run = blocker / "run"  # cannot be created: its parent is a file
    with pytest.raises(CheckpointError, match=r"cannot create checkpoint directory .*a_file/run"):
        ckpt_saver.prepare_tmp(run, run / "iter_0000003.tmp-incomplete")
    run = tmp_path / "run"
    old = run / "iter_0000002"
    old.mkdir(parents=True)
    (old / "metadata.json").write_text("{}")
    (old / "meta.json").write_text("{}")
    (run / "iter_0000004.tmp-incomplete").write_text("not a dir")  # mkdir fails here
    with pytest.raises(
        CheckpointError, match=r"writable .* previous checkpoint \(\S*iter_0000002\)"
    ):
        ckpt_saver.prepare_tmp(run, run / "iter_0000004.tmp-incomplete")
    assert old.is_dir()


@pytest.mark.parametrize("key", ["save_interval", "save_interval_minutes", "keep_last"])
def test_negative_options_are_refused(ctx: SimpleNamespace, key: str) -> None:
    setattr(ctx.cfg.checkpoint, key, -1)
    with pytest.raises(CheckpointError, match=f"checkpoint.{key}=-1 is negative"):
        ckpt_loader.choose_checkpoint(ctx.cfg.checkpoint, ctx.run_dir)
