"""The CPU compatibility layer: narrow (torch itself untouched) and a working RNG tracker."""

from __future__ import annotations

import pytest
import torch

from pretrain import compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is off with CUDA")


def test_apply_patches_megatron_modules_only():
    assert compat.apply() is True and compat.is_active()
    from megatron.core import utils as megatron_utils
    from megatron.core.pipeline_parallel import schedules

    assert isinstance(schedules.torch, compat.TorchProxy)
    # inside megatron: hard-coded CUDA allocations land on the CPU
    made = megatron_utils.torch.zeros([], dtype=torch.int, device="cuda")
    assert made.device.type == "cpu"
    assert megatron_utils.torch.cuda.current_device() == "cpu"
    # outside megatron: torch is unchanged
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")
    assert torch.zeros(1).type() == "torch.FloatTensor"
    with compat.cuda_tensor_names():
        assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1).type() == "torch.FloatTensor"


def test_cpu_rng_tracker_forks_and_restores_states():
    compat.apply()
    tracker = compat.CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 7)
    torch.manual_seed(0)
    outside_before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside_before)  # default stream untouched
    saved = tracker.get_states()
    with tracker.fork("model-parallel-rng"):
        second = torch.rand(3)
    assert not torch.equal(first, second)  # the tracked stream advanced
    tracker.set_states(saved)  # what checkpoint resume does
    with tracker.fork("model-parallel-rng"):
        assert torch.equal(torch.rand(3), second)
    with pytest.raises(Exception, match="seed 7 already exists"):
        tracker.add("other", 7)
