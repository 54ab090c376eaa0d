"""Whole-config validation, run in `__main__` before any process group starts.

Every check raises `ConfigError` naming the override key(s) and how to fix them. All ranks run
the same checks on the same config and WORLD_SIZE, so they fail together, without a hang.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from pretrain.config import CHOICES, ConfigError, PretrainConfig
from pretrain.data import check_manifests
from pretrain.parallel import check_world_size, world_size_from_env
from pretrain.peft import validate_peft
from pretrain.special_tokens import check_objective_tokens
from pretrain.vlm.checks import check_llava_config, check_llava_data


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_model(cfg: PretrainConfig) -> None:
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    _require(
        m.num_layers > 0 and m.hidden_size > 0 and m.num_attention_heads > 0,
        "model.num_layers, model.hidden_size and model.num_attention_heads must be positive",
    )
    _require(
        m.hidden_size % m.num_attention_heads == 0,
        f"model.hidden_size={m.hidden_size} must be divisible by "
        f"model.num_attention_heads={m.num_attention_heads}",
    )
    _require(
        m.num_attention_heads % tp == 0,
        f"model.num_attention_heads={m.num_attention_heads} must be divisible by "
        f"parallel.tensor_model_parallel_size={tp}; choose a TP size that divides the heads",
    )
    kv = m.kv_heads()
    _require(
        m.num_attention_heads % kv == 0,
        f"model.num_query_groups={kv} must divide model.num_attention_heads="
        f"{m.num_attention_heads}",
    )
    _require(
        kv % tp == 0,
        f"model.num_query_groups={kv} (key/value heads) must be divisible by "
        f"parallel.tensor_model_parallel_size={tp}; lower TP or raise num_query_groups",
    )
    seq = cfg.train.seq_length
    _require(
        seq <= m.max_position_embeddings,
        f"train.seq_length={seq} exceeds model.max_position_embeddings="
        f"{m.max_position_embeddings}; lower train.seq_length or raise "
        "model.max_position_embeddings",
    )
    _require(
        m.make_vocab_size_divisible_by > 0,
        "model.make_vocab_size_divisible_by must be >= 1",
    )
    _check_model_ranges(m)


def _check_model_ranges(m: Any) -> None:
    for key in ("num_query_groups", "ffn_hidden_size", "vocab_size"):
        value = getattr(m, key)
        _require(value is None or value >= 1, f"model.{key}={value} must be >= 1 (or null)")
    _require(m.rotary_base > 0, f"model.rotary_base={m.rotary_base} must be > 0")
    for key in ("hidden_dropout", "attention_dropout"):
        value = getattr(m, key)
        _require(0.0 <= value < 1.0, f"model.{key}={value} must be in [0, 1)")
    for key in ("init_method_std", "layernorm_epsilon"):
        value = getattr(m, key)
        _require(value > 0 and math.isfinite(value), f"model.{key}={value} must be > 0")


def _check_parallel(cfg: PretrainConfig, world_size: int) -> int:
    p = cfg.parallel
    _require(
        p.tensor_model_parallel_size >= 1 and p.pipeline_model_parallel_size >= 1,
        "parallel.tensor_model_parallel_size and parallel.pipeline_model_parallel_size must "
        "be >= 1",
    )
    dp = check_world_size(p, world_size)
    vpp = p.virtual_pipeline_model_parallel_size
    if vpp is not None:
        _require(
            vpp >= 1 and p.pipeline_model_parallel_size > 1,
            f"parallel.virtual_pipeline_model_parallel_size={vpp} needs "
            "parallel.pipeline_model_parallel_size > 1 (or set it to null)",
        )
    stages = p.pipeline_model_parallel_size * (vpp or 1)
    _require(
        cfg.model.num_layers % stages == 0,
        f"model.num_layers={cfg.model.num_layers} must be divisible by "
        f"parallel.pipeline_model_parallel_size={p.pipeline_model_parallel_size} x "
        f"parallel.virtual_pipeline_model_parallel_size={vpp or 1} = {stages}",
    )
    if p.sequence_parallel:
        tp = p.tensor_model_parallel_size
        _require(
            tp > 1,
            "parallel.sequence_parallel=true needs parallel.tensor_model_parallel_size > 1",
        )
        _require(
            cfg.train.seq_length % tp == 0,
            f"parallel.sequence_parallel=true needs train.seq_length={cfg.train.seq_length} "
            f"divisible by parallel.tensor_model_parallel_size={tp}",
        )
    return dp


def _check_batch(cfg: PretrainConfig, dp: int) -> None:
    t, p = cfg.train, cfg.parallel
    _require(
        t.micro_batch_size >= 1 and t.global_batch_size >= 1 and t.seq_length >= 2,
        "train.micro_batch_size and train.global_batch_size must be >= 1, train.seq_length >= 2",
    )
    per_step = t.micro_batch_size * dp
    _require(
        t.global_batch_size % per_step == 0,
        f"train.global_batch_size={t.global_batch_size} must be divisible by "
        f"train.micro_batch_size={t.micro_batch_size} x data-parallel size {dp} = {per_step}; "
        f"e.g. train.global_batch_size={per_step * max(1, t.global_batch_size // per_step)}",
    )
    if p.virtual_pipeline_model_parallel_size is not None:
        micro = t.global_batch_size // per_step
        pp = p.pipeline_model_parallel_size
        _require(
            micro % pp == 0,
            f"the interleaved schedule (parallel.virtual_pipeline_model_parallel_size) needs the "
            f"micro-batch count {micro} (train.global_batch_size / (micro_batch_size x DP)) to be "
            f"a multiple of parallel.pipeline_model_parallel_size={pp}",
        )
    _require(
        t.max_tokens is None or t.max_tokens >= 1,
        f"train.max_tokens={t.max_tokens} must be >= 1 (or null to use train.max_steps)",
    )
    _require(
        t.max_steps >= 1 or t.max_tokens is not None,
        "train.max_steps must be >= 1 (or set train.max_tokens)",
    )
    _require(
        t.stop_at_step is None or t.stop_at_step >= 1,
        f"train.stop_at_step={t.stop_at_step} must be >= 1 (or null)",
    )
    _require(t.log_interval >= 1, "train.log_interval must be >= 1")
    _require(t.max_skipped_steps >= 1, "train.max_skipped_steps must be >= 1")


def _check_optim(cfg: PretrainConfig) -> None:
    o = cfg.optim
    _require(o.lr > 0, f"optim.lr={o.lr} must be > 0")
    _require(0 <= o.min_lr <= o.lr, f"optim.min_lr={o.min_lr} must be in [0, optim.lr={o.lr}]")
    _require(o.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
    _require(o.clip_grad >= 0, "optim.clip_grad must be >= 0 (0 = off)")
    _require(
        o.decay_steps is None or o.decay_steps >= 1,
        f"optim.decay_steps={o.decay_steps} must be >= 1 (or null = the run's max steps)",
    )
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    for key in ("adam_beta1", "adam_beta2"):
        value = getattr(o, key)
        _require(0.0 <= value < 1.0, f"optim.{key}={value} must be in [0, 1)")
    _require(o.adam_eps > 0, f"optim.adam_eps={o.adam_eps} must be > 0")
    if cfg.precision == "fp16":
        _require(
            o.loss_scale is None or o.loss_scale > 0,
            f"optim.loss_scale={o.loss_scale} must be > 0 (or null for dynamic scaling)",
        )
        _require(
            o.initial_loss_scale >= o.min_loss_scale > 0,
            "optim.initial_loss_scale must be >= optim.min_loss_scale > 0",
        )
        _require(o.hysteresis >= 1, "optim.hysteresis must be >= 1")
        _require(
            o.loss_scale_window >= 1,
            f"optim.loss_scale_window={o.loss_scale_window} must be >= 1",
        )
    elif o.loss_scale is not None:
        raise ConfigError(
            f"optim.loss_scale={o.loss_scale} applies only to precision=fp16 (precision="
            f"{cfg.precision}); remove it or set precision=fp16"
        )


def _check_misc(cfg: PretrainConfig) -> None:
    _require(cfg.eval.interval >= 0, "eval.interval must be >= 0 (0 = only at the end)")
    _require(cfg.eval.iters >= 0, "eval.iters must be >= 0")
    _require(
        cfg.checkpoint.resume in ("auto", "never"),
        f"checkpoint.resume={cfg.checkpoint.resume!r} must be 'auto' or 'never'",
    )
    _require(bool(cfg.run.dir), "run.dir must not be empty")
    _check_run_dir(cfg.run.dir)
    _check_data_split(cfg.data.split)
    if cfg.data.weights is not None:
        _require(
            len(cfg.data.weights) == len(cfg.data.paths)
            and all(w > 0 and math.isfinite(w) for w in cfg.data.weights),
            f"data.weights={list(cfg.data.weights)} needs one positive weight per data.paths "
            f"entry ({len(cfg.data.paths)})",
        )
    _require(cfg.sample.max_new_tokens >= 0, "sample.max_new_tokens must be >= 0")
    peak = cfg.logging.peak_tflops
    _require(peak is None or peak > 0, f"logging.peak_tflops={peak} must be > 0 (or null)")
    p = cfg.parallel
    _require(
        not p.overlap_param_gather or p.use_distributed_optimizer,
        "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true",
    )


def _check_objective(cfg: PretrainConfig) -> None:
    """objective.* and the data keys whose meaning depends on the objective."""
    o, d = cfg.objective, cfg.data
    _check_fim(cfg)
    if o.name == "llava":
        return check_llava_config(cfg)  # pretrain/vlm/checks.py
    if o.name in ("lm", "mlm"):
        _require(
            o.pack,
            f"objective.pack=false applies to objective=sft only (objective={o.name} always "
            "packs documents across boundaries, megatron's GPTDataset); remove it or set "
            "objective=sft",
        )
        _require(
            d.valid_paths is None,
            f"data.valid_paths={list(d.valid_paths or [])} needs objective=sft or llava (objective="
            f"{o.name} takes its validation split from data.split); set data.valid_paths=null",
        )
        if o.name == "mlm":
            _check_mlm(cfg)
        return
    _require(
        d.weights is None,
        f"data.weights={list(d.weights or [])} is not supported with objective=sft: every "
        "example of every data.paths entry is visited once per epoch; set data.weights=null "
        "(repeat a directory in data.paths to upweight it)",
    )
    _require(
        d.valid_paths is None or len(d.valid_paths) > 0,
        "data.valid_paths=[] is empty; give at least one data directory or null (= data.split)",
    )


def _check_fim(cfg: PretrainConfig) -> None:
    f = cfg.data.fim
    for key in ("rate", "spm_rate"):
        value = getattr(f, key)
        _require(0.0 <= value <= 1.0, f"data.fim.{key}={value} must be in [0, 1]")
    if f.rate == 0:
        return
    _require(
        cfg.objective.name == "lm",
        f"data.fim.rate={f.rate} needs objective=lm (fill-in-the-middle reorders the documents "
        f"of next-token pretraining); objective={cfg.objective.name}: set data.fim.rate=0",
    )
    pieces = list(f.tokens().values())
    _require(
        len(set(pieces)) == 4,
        f"data.fim.*_token must be four different pieces, got {pieces}",
    )
    _require(
        cfg.train.seq_length > 8,
        f"train.seq_length={cfg.train.seq_length}: fill-in-the-middle needs at least 9 tokens",
    )


def _check_mlm(cfg: PretrainConfig) -> None:
    o, m = cfg.objective, cfg.model
    _require(0.0 < o.mask_rate < 1.0, f"objective.mask_rate={o.mask_rate} must be in (0, 1)")
    for key in ("mask_token_rate", "random_token_rate"):
        value = getattr(o, key)
        _require(0.0 <= value <= 1.0, f"objective.{key}={value} must be in [0, 1]")
    _require(
        o.mask_token_rate + o.random_token_rate <= 1.0 + 1e-9,
        f"objective.mask_token_rate={o.mask_token_rate} + objective.random_token_rate="
        f"{o.random_token_rate} must be <= 1 (the rest keep their token)",
    )
    _require(
        cfg.train.seq_length >= 3,
        f"train.seq_length={cfg.train.seq_length}: objective=mlm needs <s>, one token and </s>",
    )
    _require(
        cfg.peft.type == "none",
        f"peft.type={cfg.peft.type} is not supported with objective=mlm yet; set peft=none",
    )
    _require(
        m.kv_heads() == m.num_attention_heads,
        f"model.num_query_groups={m.num_query_groups}: objective=mlm (BERT) uses multi-head "
        "attention; set model.num_query_groups=null",
    )
    _require(
        m.position_embedding_type != "rope" or m.rotary_base == 10000,
        f"model.rotary_base={m.rotary_base}: megatron-core's BertModel fixes the rotary base at "
        "10000; set model.rotary_base=10000 or model.position_embedding_type=learned_absolute",
    )


def _check_data_split(split: str) -> None:
    try:
        shares = [float(x) for x in str(split).split(",")]
    except ValueError:
        shares = []
    _require(
        len(shares) == 3 and all(x >= 0 and math.isfinite(x) for x in shares) and shares[0] > 0,
        f"data.split={split!r} must be three non-negative numbers 'train,valid,test' with "
        "train > 0; quote it on the command line: \"data.split='98,1,1'\"",
    )


def _non_finite(node: Any, key: str = "") -> list[str]:
    """`key=value` of every float (also in lists) in a config tree that is NaN or +-Inf."""
    if dataclasses.is_dataclass(node):
        return [
            bad
            for f in dataclasses.fields(node)
            for bad in _non_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
        ]
    if isinstance(node, (list, tuple)):
        return [bad for i, value in enumerate(node) for bad in _non_finite(value, f"{key}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key}={node}"]
    return []


def _check_finite(cfg: PretrainConfig) -> None:
    """No float key may be nan or inf (optim.lr=inf would train, and save, a NaN model)."""
    bad = _non_finite(cfg)
    _require(
        not bad,
        f"{', '.join(bad)}: must be a finite number (nan and inf are not allowed), "
        "e.g. optim.lr=3e-4",
    )


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _check_run_dir(run_dir: str) -> None:
    """run.dir (or the folder it will be created in) must be a writable directory."""
    path = Path(run_dir).expanduser()
    existing = _nearest_existing(path)
    _require(
        existing.is_dir(),
        f"run.dir={path}: {existing} is a file, not a directory; choose another run.dir",
    )
    if os.access(existing, os.W_OK | os.X_OK):
        return
    read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    why = "on a read-only file system" if read_only else "not writable by this user"
    raise ConfigError(
        f"run.dir={path}: {existing} is {why}; checkpoints, logs and metrics are written "
        "there. Choose a writable run.dir"
    )


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_choices(cfg: PretrainConfig) -> None:
    for key, allowed in CHOICES.items():
        value = _lookup(cfg, key)
        _require(
            value in allowed,
            f"{key}={value!r} is not one of {', '.join(allowed)}; e.g. {key}={allowed[0]}",
        )


def validate(cfg: PretrainConfig, world_size: int | None = None) -> list[dict[str, Any]]:
    """Check the whole config (and the data manifests); return the parsed manifests."""
    world = world_size if world_size is not None else world_size_from_env()
    _check_choices(cfg)
    _check_finite(cfg)
    dp = _check_parallel(cfg, world)
    _check_model(cfg)
    _check_batch(cfg, dp)
    _check_optim(cfg)
    _check_misc(cfg)
    _check_objective(cfg)
    validate_peft(cfg)
    manifests = check_manifests(cfg.data, cfg.model, objective=cfg.objective.name)
    check_objective_tokens(cfg, manifests)
    if cfg.objective.name == "llava":
        check_llava_data(cfg, manifests)
    return manifests
