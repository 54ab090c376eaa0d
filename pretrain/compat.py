"""CPU compatibility layer for megatron-core 0.16.1 (active only when CUDA is unavailable).

megatron-core assumes CUDA in a handful of places; on a CPU-only torch they fail with "Torch not
compiled with CUDA enabled". `apply()` patches exactly those places, one megatron module at a
time, and does nothing when `torch.cuda.is_available()`, so GPU runs use unmodified megatron.
`PATCHES` lists the megatron files each patch targets; README.md (section "The CPU compatibility
layer") explains them for users:

1. `TorchProxy`: module-global `torch` of the modules in `_PROXIED_MODULES` (CUDA tensor
   factories -> CPU, `torch.cuda.current_device()` -> "cpu", sync/stream/event/nvtx no-ops,
   `torch.cuda` RNG -> CPU generator, autocast("cuda") -> autocast("cpu")). torch itself is
   untouched.
2. `CpuRNGStatesTracker` replaces `CudaRNGStatesTracker` (tensor_parallel/random.py).
3. `cuda_tensor_names`: `t.type()` reports `torch.cuda.*` and `t.cuda()` is a no-op, only while
   the megatron functions that check them run (optimizer, distrib_optimizer, clip_grads,
   language_module).
4. `DynamicGradScaler.load_state_dict` keeps the scale on the CPU (optimizer/grad_scaler.py).
5. `SequenceParallelNorm`: a torch norm usable with sequence parallelism.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

_APPLIED = False

_PROXIED_MODULES = (
    "megatron.core.utils",
    "megatron.core.timers",
    "megatron.core.rerun_state_machine",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.tensor_parallel.data",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.transformer.module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.utils",
)
"""megatron-core modules whose global `torch` is replaced by `TorchProxy` on CPU."""

_FACTORIES = frozenset(
    [
        "tensor",
        "as_tensor",
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "rand",
        "randn",
        "randint",
        "randperm",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "eye",
        "linspace",
    ]
)


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _cpu_factory(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    return wrapper


class _Inert:
    """Stand-in for CUDA streams/events: every method is a no-op, usable as a context manager."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *args, **kwargs: None

    def __enter__(self) -> _Inert:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Nvtx:
    @staticmethod
    def range_push(*args: Any, **kwargs: Any) -> None:
        return None

    @staticmethod
    def range_pop(*args: Any, **kwargs: Any) -> None:
        return None


class _CudaStandIn:
    """What `torch.cuda` looks like to the proxied megatron modules on a CPU-only machine."""

    Stream = _Inert
    Event = _Inert
    nvtx = _Nvtx

    @staticmethod
    def is_available() -> bool:
        return False

    @staticmethod
    def current_device() -> str:
        return "cpu"

    @staticmethod
    def device_count() -> int:
        return 0

    @staticmethod
    def synchronize(*args: Any, **kwargs: Any) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def stream(*args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    @staticmethod
    def current_stream(*args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    @staticmethod
    def default_stream(*args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    @staticmethod
    def get_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.random.default_generator.manual_seed(seed)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class TorchProxy:
    """Module-local replacement for `torch` in a megatron module (see the module docstring)."""

    cuda = _CudaStandIn()

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        if name in _FACTORIES:
            value = _cpu_factory(value)
        elif name == "autocast":
            value = _cpu_autocast
        return value


def _cpu_autocast(device_type: str = "cpu", *args: Any, **kwargs: Any) -> Any:
    return torch.autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)


class CpuRNGStatesTracker:
    """Named CPU-generator states; the CPU counterpart of megatron's CudaRNGStatesTracker.

    Created by megatron's own `initialize_rng_tracker` (it looks the class up by name in
    megatron/core/tensor_parallel/random.py, where `apply()` installs this class), so
    `get_cuda_rng_tracker()` and `model_parallel_cuda_manual_seed()` are unchanged.
    """

    def __init__(self, use_cudagraphable_rng: bool = False, is_inference_rng_tracker: bool = False):
        self.use_cudagraphable_rng = False
        self.is_inference_rng_tracker = is_inference_rng_tracker
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._current_state_name = "default-rng"

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        orig_state = torch.get_rng_state()
        orig_name = self._current_state_name
        if orig_name != "default-rng":
            self.states_[orig_name] = orig_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            if orig_name != "default-rng":
                orig_state = self.states_[orig_name]
            torch.set_rng_state(orig_state)
            self._current_state_name = orig_name


@contextlib.contextmanager
def cuda_tensor_names() -> Iterator[None]:
    """Make `t.type()` report `torch.cuda.*` names and `t.cuda()` a no-op, temporarily."""
    orig_type, orig_cuda = torch.Tensor.type, torch.Tensor.cuda

    def type_(self: torch.Tensor, dtype: Any = None, non_blocking: bool = False, **kw: Any) -> Any:
        if dtype is None:
            name = orig_type(self)
            if self.device.type != "cpu" or name.startswith("torch.cuda."):
                return name
            return name.replace("torch.", "torch.cuda.", 1)
        return orig_type(self, dtype, non_blocking, **kw)

    def cuda_(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.type = type_  # type: ignore[method-assign]
    torch.Tensor.cuda = cuda_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = orig_type  # type: ignore[method-assign]
        torch.Tensor.cuda = orig_cuda  # type: ignore[method-assign]


def _wrap_with_cuda_names(owner: Any, name: str) -> None:
    fn = getattr(owner, name)
    if getattr(fn, "_pretrain_compat", False):
        return

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with cuda_tensor_names():
            return fn(*args, **kwargs)

    wrapper._pretrain_compat = True  # type: ignore[attr-defined]
    raw = owner.__dict__.get(name) if isinstance(owner, type) else None
    if isinstance(raw, classmethod):
        func = raw.__func__

        @functools.wraps(func)
        def cls_wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
            with cuda_tensor_names():
                return func(cls, *args, **kwargs)

        cls_wrapper._pretrain_compat = True  # type: ignore[attr-defined]
        wrapper = classmethod(cls_wrapper)  # type: ignore[assignment]
    elif isinstance(raw, staticmethod):
        wrapper = staticmethod(wrapper)  # type: ignore[assignment]
    setattr(owner, name, wrapper)


def _grad_scaler_load_state_dict(self: Any, state_dict: dict) -> None:
    self._scale = state_dict["scale"].to("cpu")
    self._growth_tracker = state_dict["growth_tracker"]
    self._hysteresis_tracker = state_dict["hysteresis_tracker"]


def _patch_rng() -> None:
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random.CudaRNGStatesTracker = CpuRNGStatesTracker
    random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    random.initialize_rng_tracker(force_reset=True)


def _patch_tensor_checks() -> None:
    optimizer = importlib.import_module("megatron.core.optimizer.optimizer")
    distrib = importlib.import_module("megatron.core.optimizer.distrib_optimizer")
    clip_grads = importlib.import_module("megatron.core.optimizer.clip_grads")
    grad_scaler = importlib.import_module("megatron.core.optimizer.grad_scaler")
    language = importlib.import_module(
        "megatron.core.models.common.language_module.language_module"
    )
    _wrap_with_cuda_names(optimizer.Float16OptimizerWithFloat16Params, "__init__")
    _wrap_with_cuda_names(distrib.DistributedOptimizer, "__init__")
    _wrap_with_cuda_names(distrib.DistributedOptimizer, "_build_model_and_main_param_groups")
    _wrap_with_cuda_names(clip_grads, "clip_grad_by_total_norm_fp32")
    optimizer.clip_grad_by_total_norm_fp32 = clip_grads.clip_grad_by_total_norm_fp32
    _wrap_with_cuda_names(language.LanguageModule, "setup_embeddings_and_output_layer")
    grad_scaler.DynamicGradScaler.load_state_dict = _grad_scaler_load_state_dict


PATCHES = {
    "torch proxy": ", ".join(_PROXIED_MODULES),
    "rng tracker": "megatron/core/tensor_parallel/random.py",
    "tensor type checks": "optimizer/optimizer.py, optimizer/distrib_optimizer.py, "
    "optimizer/clip_grads.py, models/common/language_module/language_module.py",
    "grad scaler load": "megatron/core/optimizer/grad_scaler.py",
}
"""Which megatron-core files each patch targets (for docs and `describe()`)."""


def is_active() -> bool:
    """True when the CPU patches are installed (CUDA unavailable and `apply()` ran)."""
    return _APPLIED


def apply() -> bool:
    """Install the CPU patches once. No-op (returns False) when CUDA is available."""
    global _APPLIED
    if _APPLIED:
        return True
    if torch.cuda.is_available():
        return False
    proxy = TorchProxy()
    for name in _PROXIED_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is torch:
            module.torch = proxy
    _patch_rng()
    _patch_tensor_checks()
    _APPLIED = True
    log.debug("megatron-core CPU compatibility patches applied: %s", ", ".join(PATCHES))
    return True


class SequenceParallelNorm:
    """LayerNorm/RMSNorm usable with megatron's local spec, including sequence parallelism.

    Built by megatron as `Norm(config=..., hidden_size=..., eps=...)` and returns a plain
    `torch.nn.LayerNorm`/`torch.nn.RMSNorm` (same parameter names as megatron's
    `WrappedTorchNorm`). Under sequence parallelism each TP rank normalizes its own sequence
    shard, so the weight/bias gradients are partial per rank: they are tagged
    `sequence_parallel=True` and megatron's `finalize_model_grads` all-reduces them across the
    tensor-parallel group, as it does for its fused norms.
    """

    def __new__(cls, config: Any, hidden_size: int, eps: float = 1e-5, **kwargs: Any) -> Any:
        norm: torch.nn.Module
        if config.normalization == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps)
        else:
            norm = torch.nn.LayerNorm(hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]
        return norm
