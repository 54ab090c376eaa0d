"""`TrainContext`: everything one training run holds, typed.

Built by `pretrain.train.setup`; the step, evaluation, sampler and checkpoint code receive it
(and read parallel sizes and ranks from `ctx.dist`, never from megatron's globals).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pretrain.checkpoint.saver import Saver
from pretrain.config import PretrainConfig
from pretrain.data import BATCH_KEYS, SentencePieceTokenizer, micro_batches
from pretrain.faults import PreemptionHandler
from pretrain.metrics import NullLogger, RunLogger
from pretrain.parallel import DistInfo
from pretrain.state import TrainState

if TYPE_CHECKING:
    from megatron.core.optimizer import MegatronOptimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

Batch = dict[str, torch.Tensor]
"""One micro-batch: tokens, labels, loss_mask, position_ids ([micro_batch, seq_length]);
objective=sft adds segment_ids (which example each position belongs to); objective=mlm has
tokens, labels, loss_mask, attention_mask (`pretrain.mlm.dataset.MLM_BATCH_KEYS`); objective=llava
adds images [micro_batch, 3, S, S] (`pretrain.vlm.dataset.LLAVA_BATCH_KEYS`)."""


@dataclass
class TrainContext:
    """Everything a run holds. `model` are megatron DDP-wrapped chunks (`.module` unwraps)."""

    cfg: PretrainConfig
    """The validated config of this run."""
    dist: DistInfo
    """This process's place in the parallel layout."""
    model: list[torch.nn.Module]
    """This rank's model chunks (one per virtual pipeline stage), DDP-wrapped."""
    optimizer: MegatronOptimizer
    """megatron optimizer (ChainedOptimizer / DistributedOptimizer / Float16Optimizer...)."""
    scheduler: OptimizerParamScheduler
    """LR and weight-decay schedule."""
    tokenizer: SentencePieceTokenizer
    """The data's tokenizer."""
    data_manifests: list[dict[str, Any]]
    """Parsed manifest.json of every data.paths entry."""
    max_steps: int
    """Optimizer steps of the whole run (train.max_steps or from train.max_tokens)."""
    num_microbatches: int
    """Micro-batches per step on each DP rank (gradient accumulation)."""
    padded_vocab_size: int
    """Embedding rows: the vocabulary padded for TP divisibility (computed once)."""
    flops_per_token: float
    """Model training FLOPs per token (for TFLOP/s and MFU)."""
    state: TrainState = field(default_factory=TrainState)
    """Progress counters (checkpointed)."""
    saver: Saver = field(default_factory=Saver)
    """Checkpoint bookkeeping between saves (not checkpointed)."""
    preemption: PreemptionHandler = field(default_factory=PreemptionHandler)
    """SIGTERM/SIGUSR1 -> save and exit."""
    logger: RunLogger = field(default_factory=NullLogger)
    """Console / metrics.jsonl / W&B on rank 0, a no-op elsewhere."""
    train_dataset: Any = None
    """megatron GPTDataset / BlendedDataset of the train split (sft: SftDataset; mlm:
    MlmDataset over megatron windows)."""
    valid_dataset: Any = None
    """Validation split (None when data.split gives it no documents)."""
    train_iterator: Iterator[Batch] | None = None
    """This DP rank's micro-batches, positioned at state.consumed_samples."""
    sample_text: str | None = None
    """The end-of-run sample, once generated."""
    sft_attention: str | None = None
    """objective=sft: how examples are kept apart, `pretrain.sft.attention.ATTENTION_KINDS`
    (dense block-diagonal mask, TE thd packed sequences, or plain causal for pack=false);
    None = objective=lm."""

    @property
    def objective(self) -> str:
        """The run's objective.name: lm, sft, mlm or llava (what the step, data and sample
        run)."""
        return self.cfg.objective.name

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The tensors of one micro-batch (sft adds the examples' segment ids; mlm has an
        attention mask instead of position ids; llava adds the images)."""
        if self.objective == "mlm":
            from pretrain.mlm.dataset import MLM_BATCH_KEYS

            return MLM_BATCH_KEYS
        if self.objective == "sft":
            return (*BATCH_KEYS, "segment_ids")
        if self.objective == "llava":
            from pretrain.vlm.dataset import LLAVA_BATCH_KEYS

            return LLAVA_BATCH_KEYS
        return BATCH_KEYS

    @property
    def run_dir(self) -> Path:
        """The run directory (run.dir)."""
        return Path(self.cfg.run.dir)

    @property
    def device(self) -> torch.device:
        """This rank's device."""
        return self.dist.device

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one global batch."""
        return self.cfg.train.global_batch_size * self.cfg.train.seq_length

    def make_valid_iterator(self) -> Iterator[Batch]:
        """A fresh iterator over the fixed validation batches."""
        return micro_batches(
            self.valid_dataset,
            0,
            self.cfg.train.micro_batch_size,
            self.dist.dp_rank,
            self.dist.dp_size,
            self.batch_keys,
        )
