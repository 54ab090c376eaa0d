"""What goes into a sharded checkpoint, and how it is put back.

The state dict handed to `megatron.core.dist_checkpointing`:

```
model | model0, model1, ...  GPTModel.sharded_state_dict() of each (unwrapped) chunk
optimizer                   MegatronOptimizer.sharded_state_dict(); the distributed optimizer
                            uses the `fully_reshardable` format (loads at any TP/PP/DP)
opt_param_scheduler         OptimizerParamScheduler.state_dict()          (common.pt)
train_state                 TrainState.to_dict()                           (common.pt)
rng_state.<name>            this rank's RNG states as ShardedTensors of shape (world_size, n)
```

A LoRA run (`peft=lora`) saves only the adapters' tensors under `model*` (`PARTS`: `adapters`)
and reads its base's tensors (`base`) from the base checkpoint (`pretrain.checkpoint.adapters`).

Everything is a tensor or a plain Python value, so the checkpoint loads without unpickling
code: common.pt is read by `torch.load(weights_only=True)`, and no ShardedObject (which
torch.distributed.checkpoint would unpickle with `weights_only=False`) is saved: the
`_extra_state` entries (None in the local spec; Transformer Engine's FP8 scaling metadata, which
has no use without FP8, a precision this pipeline does not offer) are not saved, and a save that
would still hold a ShardedObject is refused (`build_save_state`).
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pretrain.checkpoint.safety import check_request

if TYPE_CHECKING:
    from pretrain.context import TrainContext

log = logging.getLogger("pretrain.checkpoint")

DISTOPT_SHARDING = "fully_reshardable"
"""DistributedOptimizer checkpoint format: canonical per-parameter state (any TP/PP/DP)."""


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """Strip megatron DDP and Float16Module wrappers down to the GPTModel."""
    while type(module).__name__ in ("DistributedDataParallel", "Float16Module"):
        module = module.module
    return module


def model_key(index: int, count: int) -> str:
    return "model" if count == 1 else f"model{index}"


def _sd_metadata() -> dict[str, Any]:
    return {
        "distrib_optim_sharding_type": DISTOPT_SHARDING,
        "chained_optim_avoid_prefix": True,
        "singleton_local_shards": False,
    }


def _drop_empty_objects(tree: Any) -> Any:
    """Replace `_extra_state` ShardedObjects (and any holding None) by non-persistent objects.

    They keep their live value on load (a module's own extra state is put back into it).
    """
    from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedObject

    if isinstance(tree, dict):
        return {k: _drop_empty_objects(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_drop_empty_objects(v) for v in tree]
    if isinstance(tree, ShardedObject) and (tree.data is None or _is_extra_state(tree.key)):
        return LocalNonpersistentObject(tree.data)
    return tree


def _is_extra_state(key: str) -> bool:
    return key.split("/")[0].endswith("_extra_state")


PARTS = ("all", "base", "adapters")
"""Which model tensors a sharded state dict holds: everything, all but the LoRA adapters (a
LoRA run reading its base), or the adapters alone (what a LoRA checkpoint stores)."""


def _in_part(key: str, part: str) -> bool:
    if part == "all":
        return True
    from pretrain.peft import is_adapter_key

    return is_adapter_key(key) == (part == "adapters")


def model_sharded_state_dict(model: list[torch.nn.Module], part: str = "all") -> dict[str, Any]:
    """Sharded state dicts of all chunks, keyed `model` or `model0..N` (Megatron-LM's names).

    `part` (see PARTS) keeps only the base tensors or only the LoRA adapters.
    """
    chunks = [unwrap(m) for m in model]
    return {
        model_key(i, len(chunks)): _drop_empty_objects(
            {
                k: v
                for k, v in chunk.sharded_state_dict(metadata=_sd_metadata()).items()
                if _in_part(k, part)
            }
        )
        for i, chunk in enumerate(chunks)
    }


def model_part(model: list[torch.nn.Module]) -> str:
    """The part a checkpoint of this model stores: `adapters` for a LoRA model, else `all`."""
    from pretrain.peft import lora_enabled

    return "adapters" if lora_enabled([unwrap(m) for m in model]) else "all"


def load_model_part(chunk: torch.nn.Module, loaded: dict[str, Any], part: str) -> None:
    """`load_state_dict` of one chunk from a (possibly partial) loaded state dict.

    For `all` strict; for a part, the keys left missing must be exactly the other part's.
    """
    if part == "all":
        chunk.load_state_dict(loaded, strict=True)
        return
    result = chunk.load_state_dict(loaded, strict=False)
    wrong = [k for k in result.missing_keys if _in_part(k, part) and "_extra_state" not in k]
    if wrong or result.unexpected_keys:
        raise RuntimeError(
            f"loading the {part} tensors: missing {wrong}, unexpected {result.unexpected_keys}"
        )


def inner_optimizers(optimizer: Any) -> list[Any]:
    """The Megatron optimizers inside a ChainedOptimizer (or the optimizer itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _is_distributed(opt: Any) -> bool:
    return type(opt).__name__ == "DistributedOptimizer"


def ensure_optimizer_state(optimizer: Any) -> None:
    """Allocate Adam states before a load (the distributed optimizer needs them to exist).

    Each parameter gets its *own* `step` tensor; see `dealias_steps`.
    """
    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None or not _is_distributed(opt) or len(torch_opt.state) > 0:
            continue
        if not isinstance(torch_opt, (torch.optim.Adam, torch.optim.AdamW)):
            continue  # Apex/TE fused Adam: megatron's own load path allocates its state
        for group in torch_opt.param_groups:
            for param in group["params"]:
                torch_opt.state[param] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(param),
                    "exp_avg_sq": torch.zeros_like(param),
                }


def dealias_steps(optimizer: Any) -> int:
    """Give every parameter its own Adam `step` tensor; returns how many were shared.

    megatron-core 0.16.1 `DistributedOptimizer.load_state_dict` (without Apex/TE) assigns ONE
    `step` tensor to every parameter's state. torch's AdamW increments `state["step"]` in place
    once per parameter, so after a resume the shared counter advanced by the number of
    parameters per step, the bias correction was wrong, and losses drifted (~3e-4 after a few
    steps). Cloning restores the per-parameter counters of an uninterrupted run.
    """
    shared = 0
    for opt in inner_optimizers(optimizer):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        seen: set[int] = set()
        for state in torch_opt.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    shared += 1
                state["step"] = step.detach().clone()
                seen.add(id(step))
    return shared


@contextlib.contextmanager
def _distopt_step_tolerant_load(optimizer: Any) -> Any:
    """Let megatron 0.16.1's DistributedOptimizer load Adam states when torch keeps `step`.

    `_set_main_param_and_optimizer_states` copies every key of the live per-parameter state
    from the loaded tensors; torch's AdamW (used without Apex/TE) has a `step` entry that the
    checkpoint stores separately, so it raised KeyError('step'). The live `step` is hidden from
    it during the copy (it was already restored from the checkpoint's param groups).
    """
    patched = []
    for opt in inner_optimizers(optimizer):
        if not _is_distributed(opt) or opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            continue
        original = opt._set_main_param_and_optimizer_states

        def tolerant(
            model_param: Any, tensors: dict, _opt: Any = opt, _orig: Any = original
        ) -> None:
            group_index, group_order = _opt.model_param_group_index_map[model_param]
            main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
            state = _opt.optimizer.state[main_param]
            step = state.pop("step", None) if "step" not in tensors else None
            try:
                _orig(model_param, tensors)
            finally:
                if step is not None:
                    state["step"] = step

        opt._set_main_param_and_optimizer_states = tolerant
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


def optimizer_sharded_state_dict(optimizer: Any, model_sd: dict, is_loading: bool) -> Any:
    """The optimizer's sharded state dict, built against the model's sharded tensors."""
    if is_loading:
        ensure_optimizer_state(optimizer)
    # Nested as {model0: ..., model1: ...} (as Megatron-LM passes it): chunks of a virtual
    # pipeline use the same local parameter names, so a flat dict would lose all but one.
    with _cpu_tensor_moves():
        sd = optimizer.sharded_state_dict(model_sd, is_loading, metadata=_sd_metadata())
    return _drop_empty_objects(sd)


def _cpu_tensor_moves() -> Any:
    """On CPU, make megatron's `tensor.cuda()` calls (distributed-optimizer gathers) no-ops."""
    from pretrain import compat

    if compat.is_active():
        return compat.cuda_tensor_names()
    return contextlib.nullcontext()


# ---- RNG states -------------------------------------------------------------------------


def capture_rng() -> dict[str, torch.Tensor]:
    """This rank's python/numpy/torch(/cuda)/megatron-tracker RNG states, as tensors."""
    from megatron.core import tensor_parallel

    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    states = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss, np_cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items():
        states[f"tracker.{name}"] = state.detach().cpu().clone()
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    """Inverse of capture_rng."""
    from megatron.core import tensor_parallel

    py = states["python"].tolist()
    has_gauss, gauss = states["python_gauss"].tolist()
    random.setstate((int(py[0]), tuple(int(v) for v in py[1:]), gauss if has_gauss else None))
    keys = states["numpy_keys"].numpy().astype(np.uint32)
    pos, np_has_gauss, np_cached = states["numpy_meta"].tolist()
    np.random.set_state(("MT19937", keys, int(pos), int(np_has_gauss), float(np_cached)))
    torch.set_rng_state(states["torch"].to(torch.uint8).cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].to(torch.uint8).cpu())
    tracker = {
        k[len("tracker.") :]: v.clone() for k, v in states.items() if k.startswith("tracker.")
    }
    if tracker:
        tensor_parallel.get_cuda_rng_tracker().set_states(tracker)


def rng_sharded_state_dict(states: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One ShardedTensor per RNG component; global shape (world_size, n), this rank's row."""
    from megatron.core.dist_checkpointing import ShardedTensor

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return {
        name: ShardedTensor.from_rank_offsets(
            f"rng_state.{name}", tensor, (0, rank, world), replica_id=0, prepend_axis_num=1
        )
        for name, tensor in states.items()
    }


# ---- full state ---------------------------------------------------------------------------


def build_save_state(ctx: TrainContext) -> dict[str, Any]:
    """The complete sharded state dict of a training context (see the module docstring)."""
    model_sd = model_sharded_state_dict(ctx.model, model_part(ctx.model))
    state: dict[str, Any] = dict(model_sd)
    state["optimizer"] = optimizer_sharded_state_dict(ctx.optimizer, model_sd, is_loading=False)
    state["opt_param_scheduler"] = ctx.scheduler.state_dict()
    state["train_state"] = ctx.state.to_dict()
    state["rng_state"] = rng_sharded_state_dict(capture_rng())
    check_request(state, where="the checkpoint to save")  # we would refuse to load it
    return state


def select_rng(states: dict[str, torch.Tensor], saved: list[str] | None) -> dict[str, Any]:
    """The RNG components to read back: those the checkpoint has (`saved`, None = all).

    A checkpoint saved without CUDA has no `cuda` entry (and one saved on GPU has one that a
    CPU run does not use): asking for a missing key would fail the whole load.
    """
    if saved is None:
        return states
    missing = sorted(set(states) - set(saved))
    if missing:
        log.warning("checkpoint has no RNG state for %s: those generators keep their seed", missing)
    return {k: v for k, v in states.items() if k in saved}


def build_load_request(
    ctx: TrainContext,
    weights_only: bool,
    with_rng: bool,
    rng_keys: list[str] | None = None,
    part: str = "all",
) -> dict[str, Any]:
    """The sharded state dict describing what to read back (tensors are filled in place).

    `rng_keys`: the RNG components recorded in meta.json (None for older checkpoints = all).
    `part`: the model tensors to read (PARTS; a LoRA run reads `base` from its base checkpoint
    and `adapters` from its own).
    """
    model_sd = model_sharded_state_dict(ctx.model, part)
    request: dict[str, Any] = dict(model_sd)
    if not weights_only:
        request["optimizer"] = optimizer_sharded_state_dict(ctx.optimizer, model_sd, True)
        if with_rng:
            request["rng_state"] = rng_sharded_state_dict(select_rng(capture_rng(), rng_keys))
    return request


def apply_loaded(
    ctx: TrainContext, loaded: dict[str, Any], weights_only: bool, part: str = "all"
) -> None:
    """Copy a loaded state dict into the model, optimizer, scheduler and RNGs (not TrainState)."""
    chunks = [unwrap(m) for m in ctx.model]
    for i, chunk in enumerate(chunks):
        load_model_part(chunk, loaded[model_key(i, len(chunks))], part)
    if weights_only:
        # Mixed precision keeps fp32 main copies of the weights: refresh them from the model.
        ctx.optimizer.reload_model_params()
        return
    with _distopt_step_tolerant_load(ctx.optimizer):
        ctx.optimizer.load_state_dict(loaded["optimizer"])
    dealias_steps(ctx.optimizer)
    ctx.scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if "rng_state" in loaded:
        restore_rng(loaded["rng_state"])
