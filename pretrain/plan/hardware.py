"""Accelerator types the planner knows: memory and dense peak throughput of one device.

Memory is the device total as the driver reports it (`nvidia-smi`'s "Total" in MiB, `rocm-smi`'s
VRAM total for the MI300X), i.e. the HBM left after ECC and the driver's own reservation, not the
marketed "80 GB". `torch.cuda.get_device_properties(0).total_memory` reads a few hundred MiB less
still (what the CUDA context reserves); `cluster.overhead_gib` (default 3 GiB) covers that, the
CUDA context, NCCL buffers and allocator fragmentation, so the planner compares
`weights + gradients + optimizer + activations + overhead` with `memory_bytes`. `detect_gpu`
takes the memory of the visible device from torch instead of this table.

Peaks are the vendors' dense (no 2:4 sparsity) datasheet figures. `peak_tflops_bf16` is the
bf16/fp16 tensor-core peak and equals `pretrain.metrics.PEAK_TFLOPS` (the MFU of the training
logs) for every GPU both tables know; `peak_tflops_fp32` is the non-tensor-core fp32 peak (the
precision=fp32 path: torch leaves TF32 matmuls off by default).
"""

from __future__ import annotations

from pretrain.config import ConfigError
from pretrain.plan.types import GpuSpec

MIB = 2**20

_GPUS = (
    # name, device memory (MiB, driver total), dense bf16/fp16 TFLOP/s, fp32 TFLOP/s
    ("h100", 81_559, 989.0, 67.0),  # H100 SXM5 80GB HBM3
    ("h200", 143_771, 989.0, 67.0),  # H200 SXM 141GB HBM3e (same compute as H100 SXM)
    ("h800", 81_559, 989.0, 67.0),  # H800 SXM5 80GB (H100 compute, cut NVLink)
    ("a100", 81_920, 312.0, 19.5),  # A100 SXM4 80GB
    ("a100-40gb", 40_960, 312.0, 19.5),  # A100 SXM4/PCIe 40GB
    ("a800", 81_920, 312.0, 19.5),  # A800 80GB (A100 compute)
    ("b200", 183_359, 2250.0, 75.0),  # B200 (HGX B200, 180 GB per GPU)
    ("l40s", 46_068, 362.0, 91.6),  # L40S 48GB GDDR6 with ECC
    ("a10", 23_028, 125.0, 31.2),  # A10 24GB (AWS A10G reported the same; metrics' "A10")
    ("v100", 32_768, 125.0, 15.7),  # V100 SXM2 32GB (fp16 tensor cores; no bf16)
    ("mi300x", 196_288, 1307.4, 163.4),  # AMD Instinct MI300X 192GB HBM3
)
"""The GPU table (see the module docstring for what each column means)."""

_ALIASES = {
    "h100-sxm": "h100",
    "h100-sxm5": "h100",
    "h100-80gb": "h100",
    "h100-sxm-80gb": "h100",
    "h100-80gb-hbm3": "h100",
    "h200-sxm": "h200",
    "h200-141gb": "h200",
    "h800-sxm": "h800",
    "a100-80gb": "a100",
    "a100-sxm": "a100",
    "a100-sxm4": "a100",
    "a100-sxm4-80gb": "a100",
    "a100-40g": "a100-40gb",
    "a100-sxm4-40gb": "a100-40gb",
    "a100-pcie-40gb": "a100-40gb",
    "b200-sxm": "b200",
    "a10g": "a10",
    "v100-32gb": "v100",
    "v100-sxm2": "v100",
    "v100-sxm2-32gb": "v100",
    "mi300": "mi300x",
}
"""Other spellings -> table name (after lower-casing and `_`/space -> `-`)."""


def _table() -> dict[str, GpuSpec]:
    return {name: GpuSpec(name, mib * MIB, bf16, fp32) for name, mib, bf16, fp32 in _GPUS}


def gpu_names() -> list[str]:
    """The table's GPU names, in table order (what `cluster.gpu` accepts besides aliases)."""
    return [row[0] for row in _GPUS]


def _normalise(name: str) -> str:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    for prefix in ("nvidia-", "amd-instinct-", "amd-", "tesla-"):
        key = key.removeprefix(prefix)
    return _ALIASES.get(key, key)


def gpu_spec(name: str) -> GpuSpec:
    """The spec of a GPU type, case-insensitive, aliases allowed (`H100_SXM`, `a100-80gb`).

    Raises:
        ConfigError: unknown name; the message lists the known ones.
    """
    spec = _table().get(_normalise(name))
    if spec is None:
        raise ConfigError(
            f"cluster.gpu={name!r} is not a known GPU type; use one of "
            f"{', '.join(gpu_names())} (or an alias such as h100-sxm, a100-80gb)"
        )
    return spec


def match_device_name(device_name: str) -> str | None:
    """Table name of a CUDA device name (`NVIDIA H100 80GB HBM3` -> h100), None if unknown."""
    words = device_name.upper().replace("-", " ").split()
    for word in words:
        key = _normalise(word)
        if key == "a100" and "40GB" in words:
            return "a100-40gb"
        if key in _table():
            return key
    return None


def detect_gpu() -> GpuSpec | None:
    """The visible CUDA device (device 0) as a GpuSpec, or None without CUDA.

    Memory is `torch.cuda.get_device_properties(0).total_memory`; the peaks come from the table
    (by device name). An unknown device gets the table's h100 peaks; set `cluster.gpu` to plan
    for another type.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    known = _table()[match_device_name(props.name) or "h100"]
    return GpuSpec(
        props.name, int(props.total_memory), known.peak_tflops_bf16, known.peak_tflops_fp32
    )
