"""The training run: `setup(cfg) -> TrainContext`, `train(ctx)`, `run(cfg)`.

Flow: init process groups -> tokenizer/manifests -> model (megatron GPTModel chunks, or
BertModel ones for objective=mlm; DDP) -> optimizer/scheduler -> `checkpoint.load_at_start` ->
data iterators at state.consumed_samples -> logger (W&B resumes state.wandb_run_id) -> loop:
train_step, evaluate, log, maybe_save, preemption check -> sample, `checkpoint.finalize`,
summary, report.

The last step of the run (max_steps) runs the final evaluation inside the loop, so its row in
metrics.jsonl holds valid_loss/valid_ppl (objective=mlm: also valid_accuracy); a job that ends
at train.stop_at_step does not evaluate beyond eval.interval.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from pretrain import checkpoint, faults, run_lock
from pretrain.config import ConfigError, PretrainConfig
from pretrain.context import TrainContext
from pretrain.data import (
    SentencePieceTokenizer,
    build_datasets,
    dataset_num_samples,
    micro_batches,
)
from pretrain.metrics import build_logger, final_values, memory_gib, peak_tflops, perplexity
from pretrain.model import build_model, flops_per_token, wrap_model
from pretrain.optim import build_optimizer, build_scheduler, configure_model_hooks
from pretrain.parallel import (
    CollectiveTimeout,
    DistInfo,
    init_distributed,
    is_collective_timeout,
)
from pretrain.peft import apply_peft
from pretrain.progress import StepMeter, progress_fields
from pretrain.run_lock import RunLock
from pretrain.sample import generate
from pretrain.sft.build import sft_attention
from pretrain.step import StepResult, evaluate_metrics, train_step
from pretrain.vlm import run as vlm

log = logging.getLogger("pretrain")


class TrainingDiverged(RuntimeError):
    """Too many consecutive skipped steps (non-finite loss or gradients)."""


def _build_chunks(cfg: PretrainConfig, vocab_size: int, manifests: list) -> list[torch.nn.Module]:
    """This rank's unwrapped model chunks: BertModel (mlm), LLaVAModel (llava) or GPTModel."""
    t = cfg.train
    if cfg.objective.name == "llava":
        return vlm.build_chunks(cfg, vocab_size, manifests)
    if cfg.objective.name == "mlm":
        from pretrain.mlm.model import build_bert_model

        return build_bert_model(
            cfg.model, cfg.parallel, vocab_size, cfg.precision, t.activation_recompute
        )
    return build_model(
        cfg.model,
        cfg.parallel,
        vocab_size=vocab_size,
        seq_length=t.seq_length,
        precision=cfg.precision,
        activation_recompute=t.activation_recompute,
        calculate_per_token_loss=cfg.objective.name == "sft",
    )


def _flops_per_token(cfg: PretrainConfig, padded_vocab: int) -> float:
    from pretrain.mlm.model import mlm_flops_per_token

    if cfg.objective.name == "llava":
        return vlm.flops_per_token(cfg, padded_vocab)
    per_token = mlm_flops_per_token if cfg.objective.name == "mlm" else flops_per_token
    return per_token(cfg.model, padded_vocab, cfg.train.seq_length)


def _build_core(
    cfg: PretrainConfig, manifests: list[dict[str, Any]], dist: DistInfo
) -> TrainContext:
    tokenizer = SentencePieceTokenizer(manifests[0])
    t = cfg.train
    chunks = _build_chunks(cfg, tokenizer.vocab_size, manifests)
    apply_peft(chunks, cfg.peft, cfg.seed)  # LoRA: adapters added, base frozen (before DDP)
    model = wrap_model(chunks, cfg.parallel, cfg.precision)
    max_steps = t.steps_for(t.global_batch_size * t.seq_length)
    optimizer = build_optimizer(model, cfg.optim, cfg.parallel, cfg.precision)
    scheduler = build_scheduler(optimizer, cfg.optim, max_steps)
    configure_model_hooks(model, optimizer, cfg.parallel)
    padded = cfg.model.padded_vocab_size(tokenizer.vocab_size, dist.tp_size)
    return TrainContext(
        cfg=cfg,
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=tokenizer,
        data_manifests=manifests,
        max_steps=max_steps,
        num_microbatches=t.global_batch_size // (t.micro_batch_size * dist.dp_size),
        padded_vocab_size=padded,
        flops_per_token=_flops_per_token(cfg, padded),
        sft_attention=sft_attention(cfg),
    )


def _build_data(ctx: TrainContext) -> None:
    cfg = ctx.cfg
    sizes = dataset_num_samples(ctx.max_steps, cfg.train.global_batch_size, 0, cfg.eval.iters)
    if ctx.objective == "mlm":
        from pretrain.mlm.dataset import build_mlm_datasets

        datasets = build_mlm_datasets(cfg, ctx.data_manifests, ctx.tokenizer, sizes)
    elif ctx.objective == "sft":
        from pretrain.sft.build import build_run_datasets

        datasets = build_run_datasets(cfg, ctx.data_manifests, ctx.sft_attention, sizes)
    elif ctx.objective == "llava":
        datasets = vlm.build_datasets(ctx, sizes)
    else:
        datasets = build_datasets(
            cfg.data, ctx.data_manifests, ctx.tokenizer, cfg.train.seq_length, cfg.seed, sizes
        )
    ctx.train_dataset, ctx.valid_dataset = datasets[0], datasets[1]
    if ctx.valid_dataset is None and cfg.eval.iters > 0:
        log.warning("no validation split (data.split=%s): evaluation is off", cfg.data.split)
    ctx.train_iterator = micro_batches(
        ctx.train_dataset,
        ctx.state.consumed_samples,
        cfg.train.micro_batch_size,
        ctx.dist.dp_rank,
        ctx.dist.dp_size,
        ctx.batch_keys,
    )


def setup(
    cfg: PretrainConfig, manifests: list[dict[str, Any]], lock: RunLock | None = None
) -> TrainContext:
    """Build the context; restores a checkpoint (if any) before data and logger.

    `lock` is rank 0's run.dir lock (None elsewhere): right after the process groups start,
    every rank raises ConfigError if rank 0 was refused it.
    """
    dist = init_distributed(cfg.parallel, seed=cfg.seed)
    run_lock.agree(lock, cfg.run.dir, dist.device)
    ctx = _build_core(cfg, manifests, dist)
    if ctx.dist.is_rank0:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.preemption.install()
    checkpoint.load_at_start(ctx)
    vlm.after_load(ctx)  # llava: vision.language_checkpoint on a fresh start
    _build_data(ctx)
    ctx.logger = build_logger(cfg, ctx.run_dir, ctx.state, ctx.dist.rank)
    _log_banner(ctx)
    return ctx


def counted_here(param: torch.nn.Parameter, dist: DistInfo) -> bool:
    """Whether this rank counts `param` in the whole model's total (each parameter once).

    DP replicas hold the same parameters (DP rank 0 counts); a tensor-parallel shard
    (`tensor_model_parallel`) is distinct on each TP rank, anything else (norms, row-parallel
    biases) is replicated over TP (TP rank 0 counts); the last pipeline stage's copy of a tied
    embedding (`shared`, megatron's duplicate for the output layer) is not counted.
    """
    if dist.dp_rank != 0 or getattr(param, "shared", False):
        return False
    return dist.tp_rank == 0 or bool(getattr(param, "tensor_model_parallel", False))


def parameter_counts(ctx: TrainContext) -> tuple[int, list[int], int]:
    """(parameters of the whole model over all TP/PP ranks, each rank's local count, the
    trainable ones of the whole model: fewer than the total with peft=lora).

    Collective (every rank calls it): one all-reduce of a [world, 3] table.
    """
    d = ctx.dist
    params = [p for chunk in ctx.model for p in chunk.parameters()]
    owned = [p for p in params if counted_here(p, d)]
    table = torch.zeros(d.world_size, 3, dtype=torch.int64, device=d.device)
    table[d.rank, 0] = sum(p.numel() for p in params)
    table[d.rank, 1] = sum(p.numel() for p in owned)
    table[d.rank, 2] = sum(p.numel() for p in owned if p.requires_grad)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(table)
    per_rank = [int(n) for n in table[:, 0].tolist()]
    return int(table[:, 1].sum()), per_rank, int(table[:, 2].sum())


def _log_banner(ctx: TrainContext) -> None:
    cfg, d = ctx.cfg, ctx.dist
    total, per_rank, trainable = parameter_counts(ctx)
    log.info(
        "run %s in %s | world %d = TP %d x PP %d x DP %d (%s, %s) | precision %s",
        cfg.run.name,
        ctx.run_dir,
        d.world_size,
        d.tp_size,
        d.pp_size,
        d.dp_size,
        d.backend,
        d.device.type,
        cfg.precision,
    )
    log.info(
        "model %s: %d layers, hidden %d, heads %d | params %d total (%.2fM), per rank "
        "%.2fM-%.2fM (rank 0: %d), trainable %d (%.2f%%) | vocab %d | "
        "steps %d x %d seqs x %d tokens (%d micro-batches) | start step %d",
        cfg.model.name,
        cfg.model.num_layers,
        cfg.model.hidden_size,
        cfg.model.num_attention_heads,
        total,
        total / 1e6,
        min(per_rank) / 1e6,
        max(per_rank) / 1e6,
        per_rank[0],
        trainable,
        100.0 * trainable / max(total, 1),
        ctx.tokenizer.vocab_size,
        ctx.max_steps,
        cfg.train.global_batch_size,
        cfg.train.seq_length,
        ctx.num_microbatches,
        ctx.state.step,
    )


def _record(ctx: TrainContext, result: StepResult, meter: StepMeter) -> dict[str, Any]:
    """The metrics row of the step just taken (it feeds `meter` first: every step counts)."""
    step_s = result.data_s + result.fwd_bwd_s + result.optim_s
    meter.update(step_s)
    progress = progress_fields(
        meter, ctx.tokens_per_step, ctx.dist.world_size, _last_step(ctx) - ctx.state.step
    )
    tokens_per_s = ctx.tokens_per_step / max(step_s, 1e-9)
    tflops = ctx.flops_per_token * tokens_per_s / ctx.dist.world_size / 1e12
    peak = peak_tflops(ctx.cfg.logging)
    return {
        "step": ctx.state.step,
        "max_steps": ctx.max_steps,
        "loss": result.loss,
        "lr": result.lr,
        "grad_norm": result.grad_norm,
        "loss_scale": result.loss_scale,
        "skipped": result.skipped,
        "overflow": result.overflow,
        "consumed_samples": ctx.state.consumed_samples,
        "consumed_tokens": ctx.state.consumed_tokens,
        "tokens_per_s": tokens_per_s,
        "tflops_per_device": tflops,
        "mfu": tflops / peak if peak else None,
        "step_s": step_s,
        "data_s": result.data_s,
        "fwd_bwd_s": result.fwd_bwd_s,
        "optim_s": result.optim_s,
        "mem_gib": memory_gib(),
        **_objective_fields(ctx, result),
        **progress,
    }


def _objective_fields(ctx: TrainContext, result: StepResult) -> dict[str, Any]:
    """sft: the global batch's target tokens and their share of its tokens; mlm: the masked
    tokens and the masked-token accuracy."""
    if result.target_tokens is None:
        return {}
    if ctx.objective == "mlm":
        return {"accuracy": result.accuracy, "masked_tokens": result.target_tokens}
    return {
        "target_tokens": result.target_tokens,
        "packing_efficiency": result.target_tokens / ctx.tokens_per_step,
    }


def _account(ctx: TrainContext, result: StepResult) -> None:
    state, cfg = ctx.state, ctx.cfg
    state.step += 1
    state.consumed_samples += cfg.train.global_batch_size
    state.consumed_tokens += ctx.tokens_per_step
    if result.skipped and not result.overflow:
        state.skipped_steps += 1
        log.warning(
            "step %d skipped: non-finite loss %s / grad norm %s (%d consecutive)",
            state.step,
            result.loss,
            result.grad_norm,
            state.skipped_steps,
        )
        if state.skipped_steps >= cfg.train.max_skipped_steps:
            raise TrainingDiverged(
                f"{state.skipped_steps} consecutive steps had a non-finite loss or gradient "
                f"(limit train.max_skipped_steps={cfg.train.max_skipped_steps}); training "
                "diverged. Lower optim.lr, raise optim.warmup_steps, or use precision=bf16; "
                "the last good checkpoint is kept."
            )
    elif result.overflow:
        log.info("step %d skipped: fp16 overflow, loss scale now %g", state.step, result.loss_scale)
    else:
        state.skipped_steps = 0


def _should_eval(ctx: TrainContext) -> bool:
    """Every eval.interval steps, and once at max_steps (the final evaluation)."""
    step, interval = ctx.state.step, ctx.cfg.eval.interval
    return step == ctx.max_steps or (interval > 0 and step % interval == 0)


def _eval_record(ctx: TrainContext) -> dict[str, Any] | None:
    valid = evaluate_metrics(ctx)
    if valid is None:
        return None
    record = {"step": ctx.state.step, "valid_loss": valid.loss, "valid_ppl": perplexity(valid.loss)}
    if valid.accuracy is not None:
        record["valid_accuracy"] = valid.accuracy
    return record


def _last_step(ctx: TrainContext) -> int:
    stop = ctx.cfg.train.stop_at_step
    return ctx.max_steps if stop is None else min(stop, ctx.max_steps)


def stopped_early(ctx: TrainContext) -> bool:
    """True when train.stop_at_step ended the loop before max_steps."""
    return ctx.state.step < ctx.max_steps


def train(ctx: TrainContext) -> int:
    """The loop; returns the process exit code (0, or faults.EXIT_PREEMPTED)."""
    cfg = ctx.cfg
    meter = StepMeter()
    if cfg.eval.at_start and ctx.state.step == 0:
        record = _eval_record(ctx)
        if record is not None:  # logged as the `step 0` row
            ctx.logger.log(record)
    while ctx.state.step < _last_step(ctx):
        result = train_step(ctx)
        _account(ctx, result)
        record = _record(ctx, result, meter)
        if _should_eval(ctx):
            record.update(_eval_record(ctx) or {})
        last = ctx.state.step == _last_step(ctx)
        if ctx.state.step % cfg.train.log_interval == 0 or "valid_loss" in record or last:
            ctx.logger.log(record)
        checkpoint.maybe_save(ctx)
        if ctx.preemption.should_stop():
            log.warning("preemption signal: saving at step %d and exiting", ctx.state.step)
            checkpoint.maybe_save(ctx, force=True)
            checkpoint.finalize(ctx)
            return faults.EXIT_PREEMPTED
    return 0


def _sample(ctx: TrainContext) -> str | None:
    """The end-of-run sample: mlm fills the prompt's masks, llava captions validation images,
    lm/sft continue the prompt (None:
    sample.enabled=false, or max_new_tokens=0 for a continuation)."""
    sample = ctx.cfg.sample
    if not sample.enabled:
        return None
    if ctx.objective == "mlm":
        from pretrain.mlm.sample import fill_masks

        return fill_masks(ctx, sample)
    if ctx.objective == "llava":
        return vlm.end_of_run_sample(ctx, sample)
    return generate(ctx, sample) if sample.max_new_tokens > 0 else None


def finish(ctx: TrainContext) -> None:
    """End of training (the final validation ran with the last step): text sample, checkpoint
    finalize, the run's summary (the last metrics row's values) and the report."""
    cfg = ctx.cfg
    start = time.perf_counter()
    text = _sample(ctx)
    if text is not None:
        log.info("sample (%.1f s):\n%s", time.perf_counter() - start, text)
        ctx.sample_text = text
        if ctx.dist.is_rank0:
            (ctx.run_dir / "sample.txt").write_text(text + "\n", encoding="utf-8")
    checkpoint.finalize(ctx)
    if ctx.dist.is_rank0:
        ctx.logger.summary(final_values(ctx.logger.last_record))
        if cfg.logging.report:
            from pretrain.report import write_report

            log.info("report: %s", write_report(ctx.run_dir))


def run(cfg: PretrainConfig, manifests: list[dict[str, Any]], lock: RunLock | None = None) -> int:
    """Set up, train, finish; always closes the logger. Returns the exit code.

    A collective that times out raises `CollectiveTimeout` naming the step it happened in.
    """
    try:
        ctx = setup(cfg, manifests, lock)
    except RuntimeError as exc:
        if is_collective_timeout(exc):
            raise CollectiveTimeout(exc, "setup", cfg.parallel.timeout_minutes) from exc
        raise
    try:
        code = train(ctx)
        if code == 0 and stopped_early(ctx):
            log.info("train.stop_at_step=%d reached; saving and exiting", ctx.state.step)
            checkpoint.finalize(ctx)
        elif code == 0:
            finish(ctx)
        return code
    except RuntimeError as exc:
        if is_collective_timeout(exc):
            during = f"step {ctx.state.step + 1} (or the end of step {ctx.state.step})"
            raise CollectiveTimeout(exc, during, cfg.parallel.timeout_minutes) from exc
        raise
    finally:
        ctx.logger.finish()


__all__ = ["ConfigError", "TrainContext", "TrainingDiverged", "run", "setup", "train"]
