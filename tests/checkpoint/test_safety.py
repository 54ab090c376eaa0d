"""Loading refuses checkpoint files that would execute code (restricted unpickling)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import CheckpointError
from pretrain.checkpoint import safety as ckpt_safety


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {self.marker}",))


def test_real_dcp_metadata_is_accepted(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)}
    dcp.save(state, checkpoint_id=str(tmp_path), no_dist=True)
    ckpt_safety.check_checkpoint_files(tmp_path)  # does not raise


def test_code_in_dcp_metadata_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(CheckpointError, match=r"global posix.system is not allowed"):
        ckpt_safety.check_checkpoint_files(tmp_path)
    assert not marker.exists()


def test_objects_in_common_pt_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"ok": torch.ones(2), "bad": _Evil(marker)}, tmp_path / "common.pt")
    with pytest.raises(CheckpointError, match="beyond tensors and plain"):
        ckpt_safety.check_checkpoint_files(tmp_path)
    assert not marker.exists()
    torch.save({"step": 3, "lr": 0.1, "t": torch.ones(2), "s": "x"}, tmp_path / "common.pt")
    ckpt_safety.check_checkpoint_files(tmp_path)
