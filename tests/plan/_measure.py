"""Measure real megatron runs for the planner's checks: one torchrun, every case in turn.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/plan/_measure.py \
        OUT.json [CASE ...]

Each case (`CASES`, default all) re-initialises megatron's parallel_state for its layout on the
same gloo process group. A `train` case builds the model, DDP wrapper and optimizer exactly as
training does (`build_model`, `wrap_model`, `build_optimizer`, `build_scheduler`,
`configure_model_hooks`, as `pretrain.train._build_core`), runs real `pretrain.step.train_step`
steps on synthetic token batches (the comm volume does not depend on the token values) through
the real DP sampler (`pretrain.data.micro_batches`), and records per rank: local parameters,
bytes of parameter storage, of the main_grad buffers and of the optimizer (fp32 main params
and states; each storage once), and the bytes given to every torch.distributed call during the
last step, by group and operation. A `count` case builds a preset on the meta device (megatron's
real module structure, no storage) and records the local parameter count.

Rank 0 writes {case: [per-rank record, ...]} to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.plan._comm_counter import CommCounter  # noqa: E402

TINY = {"num_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "ffn_hidden_size": 512}
M100 = {"num_layers": 14, "hidden_size": 768, "num_attention_heads": 12, "ffn_hidden_size": 3072}
"""~100M parameters (99.7M with the 512-token test vocabulary)."""


@dataclass(frozen=True)
class Case:
    """One measured configuration (2 ranks: dp = 2 / (tp x pp))."""

    name: str
    model: dict[str, Any] = field(default_factory=lambda: dict(TINY))
    preset: str | None = None
    """conf/model/<preset>.yaml (count cases) instead of `model` overrides."""
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    sp: bool = False
    dist_opt: bool = False
    precision: str = "fp32"
    optimizer: str = "adam"
    micro_batch: int = 2
    global_batch: int = 8
    seq_length: int = 64
    vocab: int = 512
    steps: int = 2
    kind: str = "train"
    """train | count."""

    @property
    def dp(self) -> int:
        """Data-parallel size on the 2 ranks."""
        return 2 // (self.tp * self.pp)


def _train_cases() -> list[Case]:
    cases = []
    for precision in ("fp32", "bf16"):
        for tag, layout in (
            ("dp2", {}),
            ("tp2", {"tp": 2}),
            ("pp2", {"pp": 2}),
            ("dp2_distopt", {"dist_opt": True}),
        ):
            cases.append(Case(f"tiny_{tag}_{precision}", precision=precision, **layout))
    cases += [
        Case("tiny_tp2_sp_bf16", tp=2, sp=True, precision="bf16"),
        Case("tiny_pp2_vpp2_fp32", pp=2, vpp=2),
        Case("llamaish_pp2_untied_bf16", pp=2, precision="bf16", model=_llamaish()),
        Case("llamaish_tp2_sp_fp32", tp=2, sp=True, model=_llamaish(), optimizer="sgd"),
    ]
    big = {"model": dict(M100), "micro_batch": 1, "global_batch": 2, "seq_length": 32}
    big["steps"] = 1
    for tag, layout in (
        ("dp2", {}),
        ("tp2", {"tp": 2}),
        ("pp2", {"pp": 2, "global_batch": 2}),
        ("dp2_distopt", {"dist_opt": True}),
    ):
        cases.append(Case(f"m100_{tag}_fp32", **{**big, **layout}))
    return cases


def _llamaish() -> dict[str, Any]:
    return {
        **TINY,
        "num_query_groups": 2,
        "normalization": "RMSNorm",
        "activation": "swiglu",
        "add_bias_linear": False,
        "position_embedding_type": "rope",
        "share_embeddings_and_output_weights": False,
    }


PRESET_VOCAB = {"gpt2-125m": 50257, "gpt2-350m": 50257, "llama-1b": 128256, "tiny": 512}


def _count_cases() -> list[Case]:
    return [
        Case(f"count_{preset}_{tag}", preset=preset, vocab=vocab, kind="count", **layout)
        for preset, vocab in PRESET_VOCAB.items()
        for tag, layout in (("tp1", {}), ("tp2", {"tp": 2}), ("pp2", {"pp": 2}))
    ]


CASES = {case.name: case for case in _train_cases() + _count_cases()}
"""Every case by name."""


def model_config(case: Case):
    """The ModelConfig of a case (a conf/model preset or TINY-based overrides)."""
    from pretrain.config import ModelConfig

    if case.preset is None:
        return ModelConfig(**case.model)
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / f"conf/model/{case.preset}.yaml"))
    values.pop("defaults", None)
    return ModelConfig(**values)


def parallel_config(case: Case):
    """The ParallelConfig of a case."""
    from pretrain.config import ParallelConfig

    return ParallelConfig(
        tensor_model_parallel_size=case.tp,
        pipeline_model_parallel_size=case.pp,
        virtual_pipeline_model_parallel_size=case.vpp,
        sequence_parallel=case.sp,
        use_distributed_optimizer=case.dist_opt,
    )


def group_labeller():
    """group -> tp | pp | dp | emb | mp | world | ranks[...], for the current parallel_state."""
    from megatron.core import parallel_state as ps

    named = [
        ("tp", lambda: ps.get_tensor_model_parallel_group()),
        ("pp", lambda: ps.get_pipeline_model_parallel_group()),
        ("dp", lambda: ps.get_data_parallel_group()),
        ("dp", lambda: ps.get_data_parallel_group(with_context_parallel=True)),
        (
            "dp",
            lambda: ps.get_data_parallel_group(
                with_context_parallel=True, partial_data_parallel=True
            ),
        ),
        ("dp", lambda: ps.get_intra_distributed_optimizer_instance_group()),
        ("emb", lambda: ps.get_embedding_group()),
        ("emb", lambda: ps.get_position_embedding_group()),
        ("mp", lambda: ps.get_model_parallel_group()),
    ]
    labels: dict[int, str] = {}
    for label, getter in named:
        try:
            group = getter()
        except (AssertionError, RuntimeError):
            continue
        if group is not None:
            labels.setdefault(id(group), label)

    def label(group: Any) -> str:
        if group is None or group is torch.distributed.group.WORLD:
            return "world"
        found = labels.get(id(group))
        if found is None:
            found = f"ranks{torch.distributed.get_process_group_ranks(group)}"
        return found

    return label


def _storage_bytes(tensors, seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        if tensor is None or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def state_bytes(model: list[torch.nn.Module], optimizer: Any) -> dict[str, int]:
    """Storage of parameters, main_grad buffers and optimizer (main params + states), each once."""
    params = list({id(p): p for chunk in model for p in chunk.parameters()}.values())
    seen: set[int] = set()
    weights = _storage_bytes(params, seen)
    grads = _storage_bytes([getattr(p, "main_grad", None) for p in params], seen)
    inner = [opt.optimizer for opt in getattr(optimizer, "chained_optimizers", [optimizer])]
    main = [p for opt in inner for group in opt.param_groups for p in group["params"]]
    states = [
        value
        for opt in inner
        for state in opt.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    ]
    optim = _storage_bytes(main, seen) + _storage_bytes(states, seen)
    return {"weights": weights, "gradients": grads, "optimizer": optim}


def _synthetic_dataset(case: Case) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    s = case.seq_length
    return [
        {
            "tokens": torch.randint(0, case.vocab, (s,), generator=generator),
            "labels": torch.randint(0, case.vocab, (s,), generator=generator),
            "loss_mask": torch.ones(s),
            "position_ids": torch.arange(s),
        }
        for _ in range(case.global_batch)
    ]


def pretrain_config(case: Case):
    """The PretrainConfig a training run of `case` would have."""
    from pretrain.config import OptimConfig, PretrainConfig, TrainConfig

    return PretrainConfig(
        model=model_config(case),
        parallel=parallel_config(case),
        optim=OptimConfig(optimizer=case.optimizer, warmup_steps=1),
        train=TrainConfig(
            micro_batch_size=case.micro_batch,
            global_batch_size=case.global_batch,
            seq_length=case.seq_length,
            max_steps=case.steps,
        ),
        precision=case.precision,
    )


def _train_context(case: Case, dist: Any):
    from pretrain.context import TrainContext
    from pretrain.data import micro_batches
    from pretrain.model import build_model, wrap_model
    from pretrain.optim import build_optimizer, build_scheduler, configure_model_hooks

    cfg = pretrain_config(case)
    chunks = build_model(cfg.model, cfg.parallel, case.vocab, case.seq_length, case.precision)
    model = wrap_model(chunks, cfg.parallel, case.precision)
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, case.precision)
    scheduler = build_scheduler(optimizer, cfg.optim, case.steps)
    configure_model_hooks(model, optimizer, cfg.parallel)
    ctx = TrainContext(
        cfg=cfg,
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=None,  # type: ignore[arg-type]
        data_manifests=[],
        max_steps=case.steps,
        num_microbatches=case.global_batch // (case.micro_batch * dist.dp_size),
        padded_vocab_size=cfg.model.padded_vocab_size(case.vocab, case.tp),
        flops_per_token=0.0,
    )
    dataset = _synthetic_dataset(case)
    ctx.train_iterator = micro_batches(dataset, 0, case.micro_batch, dist.dp_rank, dist.dp_size)
    return ctx


def measure_train(case: Case, dist: Any, counter: CommCounter) -> dict[str, Any]:
    """Build as training does, run `case.steps` real train steps; count the last one's comm."""
    from pretrain.step import train_step

    ctx = _train_context(case, dist)
    counter.label_group = group_labeller()
    for step in range(case.steps):
        counter.reset()
        counter.active = step == case.steps - 1
        result = train_step(ctx)
        counter.active = False
        ctx.state.step += 1
    params = {id(p): p for chunk in ctx.model for p in chunk.parameters()}
    return {
        "params": sum(p.numel() for p in params.values()),
        "memory": state_bytes(ctx.model, ctx.optimizer),
        "comm": dict(counter.bytes),
        "calls": dict(counter.calls),
        "loss": result.loss,
    }


def measure_count(case: Case) -> dict[str, Any]:
    """Local parameters of a preset built on the meta device (megatron's real modules)."""
    from pretrain.model import build_model

    with torch.device("meta"):
        chunks = build_model(
            model_config(case), parallel_config(case), case.vocab, 64, "fp32", "none", True
        )
    params = {id(p): p for chunk in chunks for p in chunk.parameters()}
    return {"params": sum(p.numel() for p in params.values())}


def run_case(case: Case, counter: CommCounter) -> dict[str, Any]:
    """Re-initialise parallel_state for `case` and measure it on this rank."""
    from megatron.core import parallel_state

    from pretrain.parallel import init_distributed

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist = init_distributed(parallel_config(case), seed=1234)
    start = time.perf_counter()
    record = measure_count(case) if case.kind == "count" else measure_train(case, dist, counter)
    record.update(rank=dist.rank, pp_rank=dist.pp_rank, tp_rank=dist.tp_rank, dp_rank=dist.dp_rank)
    record["seconds"] = time.perf_counter() - start
    return record


def main(argv: list[str]) -> None:
    """Measure the named cases (default all) and write OUT.json on rank 0."""
    from pretrain import compat
    from pretrain.parallel import teardown

    out, names = Path(argv[0]), argv[1:] or list(CASES)
    compat.apply()  # imports the megatron modules whose aliases the counter must wrap
    counter = CommCounter()
    counter.install()
    results: dict[str, Any] = {}
    for name in names:
        record = run_case(CASES[name], counter)
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, record)
        results[name] = {"case": asdict(CASES[name]), "ranks": gathered}
    if torch.distributed.get_rank() == 0:
        out.write_text(json.dumps(results, indent=1, sort_keys=True))
    teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])


def measured_kinds(comm: dict[str, int]) -> dict[str, int]:
    """A rank's counted bytes by planner kind (COMM_KINDS).

    Calls over a group of one rank (`...:size1`) move nothing and are dropped; tp/dp groups map
    to tp_*/dp_* by operation; p2p to pp_send_recv; the rest (embedding group, control scalars)
    to other.
    """
    from pretrain.plan.types import COMM_KINDS

    kinds = dict.fromkeys(COMM_KINDS, 0)
    for key, nbytes in comm.items():
        if key.endswith(":size1"):
            continue
        label, op = key.split(":")
        if label == "p2p":
            kinds["pp_send_recv"] += nbytes
        elif label in ("tp", "dp") and f"{label}_{op}" in kinds:
            kinds[f"{label}_{op}"] += nbytes
        else:
            kinds["other"] += nbytes
    return kinds
