"""Checkpoint metadata (`meta.json`): what was saved, and the checks a resume makes against it.

`meta.json` is plain JSON written by rank 0 into every checkpoint. It is read *before* any
tensor is loaded, so a changed tokenizer, dataset or model shape is a clear `CheckpointError`
naming the key, not a shape error deep inside torch.distributed.checkpoint (or silent garbage).
It also carries the resolved config (secrets scrubbed), so `pretrain.export_hf` can rebuild the
model from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.layout import META_FILE
from pretrain.checkpoint.state import DISTOPT_SHARDING
from pretrain.config import ModelConfig, PretrainConfig
from pretrain.state import TrainState

if TYPE_CHECKING:
    from pretrain.context import TrainContext
    from pretrain.parallel import DistInfo

FORMAT_VERSION = 1
"""Version of our checkpoint layout (bumped on incompatible changes)."""

REDACTED = "***REDACTED***"
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential", "apikey")
_SPLIT = re.compile(r"[^a-z0-9]+")

ARCH_KEYS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "kv_heads",
    "ffn_size",
    "position_embedding_type",
    "normalization",
    "activation",
    "add_bias_linear",
    "share_embeddings_and_output_weights",
)
"""Model properties that must match between a checkpoint and the model it is loaded into."""

REQUIRED_KEYS = (
    ("step",),
    ("train_state",),
    ("layout",),
    ("arch", "vocab_size"),
    ("precision",),
    ("config", "model"),
    ("config", "train", "seq_length"),
)
"""Paths of the meta.json keys that loading and the Hugging Face export read."""


_PIECE_KEYS = frozenset(
    {"prefix_token", "middle_token", "suffix_token", "pad_token", "mask_token", "image_token"}
    | {"drop_class_token"}
)
"""Config keys that name tokenizer pieces (data.fim.*_token, objective.mask_token,
vision.image_token) or model tokens (vision.drop_class_token), not secrets."""


def is_secret_name(name: str) -> bool:
    """True for names like WANDB_API_KEY, hf_token, db-password (not for 'tokenizer' or the
    tokenizer-piece keys such as mask_token)."""
    if name in _PIECE_KEYS:
        return False
    parts = [p for p in _SPLIT.split(name.lower()) if p]
    return any(part in _SECRET_WORDS for part in parts)


def secret_values(environ: dict[str, str] | None = None) -> set[str]:
    """Values of environment variables whose names look secret (at least 6 characters long)."""
    env = os.environ if environ is None else environ
    return {v for k, v in env.items() if is_secret_name(k) and len(v) >= 6}


def scrub_secrets(obj: Any, secrets: set[str] | None = None) -> Any:
    """Copy of a JSON-like tree with secret-named keys and secret env values redacted."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, dict):
        return {
            k: (REDACTED if is_secret_name(str(k)) and v is not None else scrub_secrets(v, secrets))
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
    return obj


def arch_of(model_cfg: ModelConfig, vocab_size: int | None) -> dict[str, Any]:
    """The architecture properties of a ModelConfig that a checkpoint must agree on."""
    arch: dict[str, Any] = {
        key: getattr(model_cfg, key) for key in ARCH_KEYS if key not in ("kv_heads", "ffn_size")
    }
    arch["kv_heads"] = model_cfg.kv_heads()
    arch["ffn_size"] = model_cfg.ffn_size()
    arch["vocab_size"] = vocab_size
    if model_cfg.position_embedding_type == "learned_absolute":
        arch["max_position_embeddings"] = model_cfg.max_position_embeddings
    return arch


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    """The ModelConfig a checkpoint was trained with (from meta.json's resolved config).

    Keys this version does not know are ignored, missing ones take their defaults, so older
    and newer checkpoints still load.
    """
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    saved = meta.get("config", {}).get("model", {})
    return ModelConfig(**{k: v for k, v in saved.items() if k in known})


def layout_of(cfg: PretrainConfig, dist: DistInfo) -> dict[str, Any]:
    """The parallel layout this process group runs at (recorded in meta.json)."""
    return {
        **dist.layout(),
        "use_distributed_optimizer": cfg.parallel.use_distributed_optimizer,
        "distrib_optim_sharding_type": DISTOPT_SHARDING,
    }


SINGLE_PROCESS_LAYOUT = {
    "world_size": 1,
    "tensor_model_parallel_size": 1,
    "pipeline_model_parallel_size": 1,
    "virtual_pipeline_model_parallel_size": None,
    "data_parallel_size": 1,
}
"""Layout of a model-only checkpoint written by one process (Hugging Face import)."""


def data_fingerprint(cfg: PretrainConfig, manifests: list[dict]) -> list[dict[str, Any]]:
    """One entry per data.paths item: path and the sha256 of its manifest.json bytes."""
    return [
        {"path": str(path), "sha256": man.get("sha256")}
        for path, man in zip(cfg.data.paths, manifests, strict=False)
    ]


def tokenizer_of(manifests: list[dict]) -> dict[str, Any]:
    """Tokenizer identity (sha256, vocab size, special ids) from the first manifest."""
    if not manifests:
        return {}
    tok = manifests[0].get("tokenizer", {})
    keys = ("sha256", "vocab_size", "eod_id", "bos_id", "pad_id", "unk_id", "type")
    return {k: tok.get(k) for k in keys}


def tokenizer_vocab(cfg: PretrainConfig, manifests: list[dict]) -> int | None:
    """The vocabulary size of this run: model.vocab_size, else the data tokenizer's."""
    return cfg.model.vocab_size or tokenizer_of(manifests).get("vocab_size")


def build_meta(
    cfg: PretrainConfig,
    *,
    train_state: TrainState,
    layout: dict[str, Any],
    tokenizer: dict[str, Any],
    data: list[dict[str, Any]],
    vocab_size: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything `meta.json` records (training saves and Hugging Face imports alike)."""
    return {
        "format_version": FORMAT_VERSION,
        "step": train_state.step,
        "train_state": train_state.to_dict(),
        "layout": layout,
        "arch": arch_of(cfg.model, vocab_size),
        "precision": cfg.precision,
        "tokenizer": tokenizer,
        "data": data,
        "config": scrub_secrets(dataclasses.asdict(cfg)),
        "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def build_training_meta(ctx: TrainContext) -> dict[str, Any]:
    """meta.json of the checkpoint a training run writes now (LoRA: with `peft`)."""
    extra: dict[str, Any] = {}
    if ctx.cfg.peft.type != "none":
        from pretrain.checkpoint.adapters import peft_record

        extra["peft"] = peft_record(ctx.cfg.peft, ctx.saver.peft_base)
    return build_meta(
        ctx.cfg,
        train_state=ctx.state,
        layout=layout_of(ctx.cfg, ctx.dist),
        tokenizer=tokenizer_of(ctx.data_manifests),
        data=data_fingerprint(ctx.cfg, ctx.data_manifests),
        vocab_size=tokenizer_vocab(ctx.cfg, ctx.data_manifests),
        **extra,
    )


def write_meta(ckpt_dir: Path, meta: dict[str, Any]) -> None:
    """Write meta.json and a human-readable config.yaml (the resolved config) into ckpt_dir."""
    import yaml  # PyYAML ships with omegaconf

    (ckpt_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (ckpt_dir / "config.yaml").write_text(yaml.safe_dump(meta["config"], sort_keys=False))


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    """Parse `meta.json` of a checkpoint (JSON only: nothing is executed)."""
    path = ckpt_dir / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a JSON object (damaged, or not written by pretrain)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {meta.get('format_version')} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    missing = [".".join(keys) for keys in REQUIRED_KEYS if not _has(meta, keys)]
    if missing:
        raise CheckpointError(
            f"{path}: missing key(s) {', '.join(missing)} (damaged, or not written by pretrain)"
        )
    return meta


def _has(tree: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def check_compatible(
    meta: dict[str, Any],
    ckpt_dir: Path,
    cfg: PretrainConfig,
    manifests: list[dict],
    vocab: int | None,
    weights_only: bool,
) -> None:
    """Raise CheckpointError naming every incompatibility between a checkpoint and this run."""
    problems = _objective_change(meta, cfg)
    saved_arch, arch = meta.get("arch", {}), arch_of(cfg.model, vocab)
    for key, now in arch.items():
        if key in saved_arch and saved_arch[key] != now:
            name = "the tokenizer's vocab_size" if key == "vocab_size" else f"model.{key}"
            problems.append(f"{name}: checkpoint has {saved_arch[key]!r}, this run has {now!r}")
    saved_tok, tok = meta.get("tokenizer", {}), tokenizer_of(manifests)
    if saved_tok.get("sha256") and tok.get("sha256") and saved_tok["sha256"] != tok["sha256"]:
        problems.append(
            f"tokenizer changed: checkpoint was trained with tokenizer sha256 "
            f"{saved_tok['sha256'][:12]}..., data.paths now have {tok['sha256'][:12]}... "
            "(token ids would mean different text)"
        )
    if not weights_only:
        problems += _data_changes(meta.get("data", []), data_fingerprint(cfg, manifests))
        old_prec = meta.get("precision")
        if old_prec and (old_prec == "fp32") != (cfg.precision == "fp32"):
            problems.append(
                f"precision: checkpoint has {old_prec!r}, this run has {cfg.precision!r} (the "
                "optimizer state differs between fp32 and mixed precision; change precision "
                "with checkpoint.weights_only=true)"
            )
    if problems:
        hint = (
            "Fix the config to match the checkpoint"
            + (
                ""
                if weights_only
                else ", or start fresh training from its weights "
                "with checkpoint.weights_only=true (when only the data changed)"
            )
            + ", or choose another run.dir / checkpoint.resume=never."
        )
        raise CheckpointError(
            f"checkpoint {ckpt_dir} does not match this run:\n  - "
            + "\n  - ".join(problems)
            + f"\n{hint}"
        )


def model_family(objective: str) -> str:
    """The model an objective trains: `bert` (objective=mlm), `llava` (objective=llava: ViT +
    projector + GPT) or `gpt` (lm, sft)."""
    return {"mlm": "bert", "llava": "llava"}.get(objective, "gpt")


VISION_ARCH_KEYS = (
    "image_size",
    "patch_size",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
    "projector_ffn_hidden_size",
    "drop_class_token",
)
"""vision.* keys that change the LLaVA model's tensors (or the image embeddings' count)."""


def _vision_changes(meta: dict[str, Any], cfg: PretrainConfig) -> list[str]:
    saved = meta.get("config", {}).get("vision", {})
    now = dataclasses.asdict(cfg.vision)
    return [
        f"vision.{key}: checkpoint has {saved[key]!r}, this run has {now[key]!r}"
        for key in VISION_ARCH_KEYS
        if key in saved and saved[key] != now[key]
    ]


def _objective_change(meta: dict[str, Any], cfg: PretrainConfig) -> list[str]:
    """A BERT checkpoint (objective=mlm) never loads into a GPT run, nor the other way round
    (different modules, and an encoder's weights are no decoder's), nor a LLaVA one into
    either, or either into a LLaVA run; lm <-> sft is allowed; llava -> llava needs the same
    vision.* architecture."""
    saved = meta.get("config", {}).get("objective", {}).get("name", "lm")
    now = cfg.objective.name
    if model_family(saved) == model_family(now):
        return _vision_changes(meta, cfg) if now == "llava" else []
    hint = (
        "; vision.language_checkpoint starts the language model of a llava run from a GPT one"
        if now == "llava" and model_family(saved) == "gpt"
        else ""
    )
    return [
        f"objective: checkpoint was trained with objective={saved} "
        f"({model_family(saved).upper()}), this run has objective={now} "
        f"({model_family(now).upper()}); a checkpoint only loads into a run of the same model "
        f"(set objective={saved}, or start {now} from scratch in another run.dir{hint})"
    ]


def _data_changes(saved: list[dict], now: list[dict]) -> list[str]:
    problems = []
    if len(saved) != len(now):
        return [f"data.paths: checkpoint used {len(saved)} directories, this run has {len(now)}"]
    for i, (old, new) in enumerate(zip(saved, now, strict=True)):
        if old.get("sha256") and new.get("sha256") and old["sha256"] != new["sha256"]:
            problems.append(
                f"data.paths[{i}] ({new['path']}): manifest.json sha256 changed "
                f"({old['sha256'][:12]}... -> {new['sha256'][:12]}...); the dataset was rebuilt "
                "or replaced, so resuming would silently change the data order"
            )
    return problems


_DATA_ORDER_KEYS = ("global_batch_size", "seq_length")
_SCHEDULE_ATTRS = {
    "max_lr": "optim.lr",
    "min_lr": "optim.min_lr",
    "lr_warmup_steps": "optim.warmup_steps",
    "lr_decay_steps": "optim.decay_steps (default train.max_steps)",
    "lr_decay_style": "optim.decay_style",
    "start_wd": "optim.weight_decay",
}


def schedule_of(scheduler: Any) -> dict[str, Any]:
    """The LR/weight-decay schedule parameters of a megatron OptimizerParamScheduler."""
    return {attr: getattr(scheduler, attr, None) for attr in _SCHEDULE_ATTRS}


def schedule_changes(configured: dict[str, Any], restored: dict[str, Any]) -> list[str]:
    """Schedule values of this run's config that the checkpoint's schedule overrides.

    On resume the LR/weight-decay schedule is restored from the checkpoint (megatron's
    `use_checkpoint_opt_param_scheduler`): a new `optim.lr`, or a longer `train.max_steps`
    (the decay length), does not apply. Extending training is allowed; the LR then stays at
    `optim.min_lr` after the checkpoint's decay length.
    """
    return [
        f"{_SCHEDULE_ATTRS[attr]}: this config gives {configured[attr]!r}, the checkpoint's "
        f"{restored[attr]!r} is used (the LR schedule continues; for a new one start a new run "
        "with checkpoint.weights_only=true)"
        for attr in _SCHEDULE_ATTRS
        if configured.get(attr) != restored.get(attr)
    ]


def resume_changes(meta: dict[str, Any], cfg: PretrainConfig) -> list[str]:
    """Allowed but notable config differences of a resumed run (see also schedule_changes).

    A new global batch size or sequence length keeps `consumed_samples`, but the samples are
    then cut differently: the data order is no longer the uninterrupted run's.
    """
    saved = meta.get("config", {}).get("train", {})
    notes = [
        f"train.{key}: {saved[key]!r} -> {getattr(cfg.train, key)!r}: training continues after "
        "the consumed samples, but the data order differs from an uninterrupted run"
        for key in _DATA_ORDER_KEYS
        if key in saved and saved[key] != getattr(cfg.train, key)
    ]
    if meta.get("precision") and meta["precision"] != cfg.precision:  # bf16 <-> fp16
        notes.append(f"precision: {meta['precision']!r} -> {cfg.precision!r}")
    return notes
