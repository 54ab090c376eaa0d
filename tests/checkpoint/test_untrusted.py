"""A `.metadata` byte entry (BytesStorageMetadata) whose bytes are a pickle that runs code is
refused, in training (resume) and in the Hugging Face export: exit 2, and the code never runs.

torch.distributed.checkpoint's default load planner hands such an entry to
`torch.load(weights_only=False)`; `_tamper.plant_byte_entry` plants one in a real checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from pretrain.checkpoint import safety
from pretrain.checkpoint.errors import UnsafeCheckpoint
from tests.checkpoint._common import export_hf, single_process, small_overrides
from tests.checkpoint._tamper import MarkerPayload, copy_run, plant_byte_entry


def _plain_dcp_load(ckpt: Path, key: str) -> None:
    """What torch.distributed.checkpoint does with the planted entry, without our guards."""
    import torch.distributed.checkpoint as dcp

    dcp.load({key: torch.empty(0)}, checkpoint_id=str(ckpt), no_dist=True)


def test_planted_entry_runs_code_without_guards_and_not_with_them(
    saved_run: Path, tmp_path: Path
) -> None:
    ckpt = copy_run(saved_run, tmp_path / "run") / "iter_0000006"
    live = tmp_path / "LIVE"
    key = plant_byte_entry(ckpt, live)
    _plain_dcp_load(ckpt, key)
    assert live.exists()  # the crafted checkpoint is a working exploit
    live.unlink()
    with pytest.raises(CheckpointException), safety.guarded_load() as guard:
        _plain_dcp_load(ckpt, key)  # torch turns the refusal into "metadata is None; ..."
    assert isinstance(guard.refusal, UnsafeCheckpoint)
    assert "BytesStorageMetadata is not allowed" in str(guard.refusal)
    assert not live.exists()


def test_guarded_planner_never_unpickles_bytes(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    marker = tmp_path / "MARKER"
    payload = io.BytesIO()
    torch.save(MarkerPayload(marker), payload)
    payload.seek(0)
    index = MetadataIndex("x")
    item = ReadItem(LoadItemType.BYTE_IO, index, torch.Size([0]), index, torch.Size([0]), [0])
    with pytest.raises(UnsafeCheckpoint, match="stored as pickled bytes"), safety.guarded_load():
        DefaultLoadPlanner().load_bytes(item, payload)
    assert not marker.exists()
    assert DefaultLoadPlanner.load_bytes is not safety._refuse_bytes  # restored afterwards


def test_index_entries_must_be_tensors_in_shard_files(saved_run: Path) -> None:
    import copy
    import pickle

    from torch.distributed.checkpoint.filesystem import _StorageInfo

    with open(saved_run / "iter_0000002" / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # noqa: S301 - our own test file
    safety.check_index(metadata, "ok")
    outside = copy.deepcopy(metadata)
    index, info = next(iter(outside.storage_data.items()))
    outside.storage_data[index] = _StorageInfo("../../etc/passwd", info.offset, info.length)
    with pytest.raises(UnsafeCheckpoint, match="points outside the shard files"):
        safety.check_index(outside, "outside")


def test_load_requests_hold_no_sharded_objects() -> None:
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    request = {"model": {"w": torch.zeros(2)}, "extra": ShardedObject("x", {}, (1,), (0,))}
    with pytest.raises(UnsafeCheckpoint, match="x is a ShardedObject"):
        safety.check_request(request)


@pytest.mark.distributed
def test_resume_and_export_refuse_the_planted_entry(
    saved_run: Path, prepared_data: Path, tmp_path: Path
) -> None:
    run = copy_run(saved_run, tmp_path / "run")
    marker = tmp_path / "MARKER"
    plant_byte_entry(run / "iter_0000006", marker)

    resumed = single_process(small_overrides(prepared_data, 8), run)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert f"{run}/iter_0000006/.metadata: refusing to load" in resumed.stderr
    assert "BytesStorageMetadata is not allowed" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert not marker.exists()
    # a refusal is not damage: no fallback to iter_0000004, nothing renamed, nothing trained
    assert sorted(p.name for p in run.glob("iter_*")) == [
        "iter_0000002",
        "iter_0000004",
        "iter_0000006",
    ]
    assert (run / "latest").read_text().strip() == "iter_0000006"

    exported = export_hf(run / "iter_0000006", tmp_path / "hf")
    assert exported.returncode == 2, exported.stderr[-3000:]
    assert "BytesStorageMetadata is not allowed" in exported.stderr
    assert "Traceback" not in exported.stderr
    assert not marker.exists() and not (tmp_path / "hf").exists()
