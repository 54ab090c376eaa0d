"""Typed configuration tree for `python -m pretrain` (Hydra structured configs).

Dataclass defaults describe a tiny CPU run; YAML files under conf/ only override them.
Field names follow megatron-core where one exists, so the adapter in model.py is a 1:1 copy.
Derived values (accumulation steps, padded vocab, data-parallel size) are methods, not
interpolations. Only `pretrain/__main__.py` imports Hydra and calls `register_configs()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Precision = str
"""One of "fp32", "bf16", "fp16" (OmegaConf 2.3 has no Literal; validate.py checks the value)."""

CHOICES = {
    "precision": ("fp32", "bf16", "fp16"),
    "model.position_embedding_type": ("learned_absolute", "rope"),
    "model.normalization": ("LayerNorm", "RMSNorm"),
    "model.activation": ("gelu", "swiglu"),
    "parallel.backend": ("auto", "gloo", "nccl"),
    "optim.optimizer": ("adam", "sgd"),
    "optim.decay_style": ("cosine", "linear", "constant"),
    "train.activation_recompute": ("none", "selective", "full"),
    "logging.wandb.mode": ("offline", "online", "disabled"),
    "cluster.check": ("warn", "error", "off"),
    "objective.name": ("lm", "sft", "mlm", "llava"),
    "vision.stage": ("align", "joint"),
    "data.fim.level": ("document", "context"),
    "peft.type": ("none", "lora"),
}
"""Allowed values of the string-choice keys."""


class ConfigError(ValueError):
    """A user configuration problem; the message names the key to change and how."""


@dataclass
class RunConfig:
    name: str = "tiny"
    """Run name; used for the default run directory and the W&B run name."""
    dir: str = "checkpoints/${run.name}"
    """Run directory: metrics.jsonl, report.png, wandb/, checkpoints, .hydra (rank 0). In a
    sweep (`-m`) each point trains in `${sweep.dir}/<point>` instead (docs/sweeps.md)."""


@dataclass
class SweepConfig:
    name: str = "sweep"
    """Sweep name (`-m` only): the ready sweeps (`sweep=lr|model_size|layout`) set their own."""
    dir: str = "checkpoints/${sweep.name}"
    """Sweep directory (`-m` only): point `<key=value,...>` of the swept keys trains in
    `${sweep.dir}/<key=value,...>`; a re-run resumes each point there, skipping finished ones."""


@dataclass
class ModelConfig:
    name: str = "tiny"
    """Preset name (informational; chosen with `model=<preset>`)."""
    num_layers: int = 2
    """Transformer layers. Must be divisible by PP x VPP."""
    hidden_size: int = 64
    """Model width."""
    num_attention_heads: int = 4
    """Attention heads. Must be divisible by parallel.tensor_model_parallel_size."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention (None = num_attention_heads, i.e. MHA)."""
    ffn_hidden_size: int | None = None
    """MLP width (None = 4 x hidden_size)."""
    max_position_embeddings: int = 256
    """Longest sequence the position embedding supports (learned positions: its table size)."""
    position_embedding_type: str = "learned_absolute"
    """Learned absolute positions (GPT-2) or rotary embeddings (Llama)."""
    rotary_base: int = 10000
    """RoPE base frequency (rope only)."""
    normalization: str = "LayerNorm"
    """Norm layer type."""
    activation: str = "gelu"
    """MLP activation: GELU (GPT-2) or SwiGLU (gated SiLU, Llama)."""
    add_bias_linear: bool = True
    """Biases in the linear layers (GPT-2 yes, Llama no)."""
    share_embeddings_and_output_weights: bool = True
    """Tie the input embedding and the output layer (False = untied)."""
    vocab_size: int | None = None
    """Tokenizer vocabulary size; None takes it from the data manifest. If set, must match it."""
    make_vocab_size_divisible_by: int = 128
    """The embedding table is padded to a multiple of this x TP size (Megatron's padding)."""
    hidden_dropout: float = 0.0
    """Dropout after attention/MLP."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    init_method_std: float = 0.02
    """Std of the normal weight initialisation."""
    layernorm_epsilon: float = 1e-5
    """Norm epsilon."""

    def kv_heads(self) -> int:
        """Number of key/value heads."""
        return self.num_query_groups or self.num_attention_heads

    def ffn_size(self) -> int:
        """Effective MLP width."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    def head_dim(self) -> int:
        """Per-head width (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, vocab_size: int, tp: int) -> int:
        """Embedding rows: vocab rounded up to make_vocab_size_divisible_by x TP."""
        multiple = self.make_vocab_size_divisible_by * tp
        return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    """TP: ranks a layer's weights are split over. Must divide heads and kv heads."""
    pipeline_model_parallel_size: int = 1
    """PP: pipeline stages. num_layers must be divisible by PP x VPP."""
    virtual_pipeline_model_parallel_size: int | None = None
    """VPP: model chunks per pipeline rank (interleaved 1F1B schedule); None = off. Needs PP>1."""
    sequence_parallel: bool = False
    """Split norm/dropout activations along the sequence over the TP group. Needs TP>1."""
    use_distributed_optimizer: bool = False
    """Shard optimizer states over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = False
    """Overlap the DP gradient reduce with backward (GPU)."""
    overlap_param_gather: bool = False
    """Overlap the distributed optimizer's param all-gather with forward (GPU)."""
    backend: str = "auto"
    """torch.distributed backend: auto = nccl with CUDA, gloo without."""
    timeout_minutes: float = 10.0
    """Collective timeout of every process group (torch's and megatron's
    distributed_timeout_minutes): a rank left waiting this long by a peer that stopped
    responding exits with code 69 and a message naming the collective. 10 = Megatron-LM's and
    NCCL's default: above the longest legitimate wait (rank 0 building the dataset indexes,
    a large checkpoint save), far below torch's 30-minute gloo default. Fractions allowed."""

    def model_parallel_size(self) -> int:
        """TP x PP ranks hold one model replica."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size


@dataclass
class FimConfig:
    """Fill-in-the-middle (Bavarian et al. 2022) for objective=lm: a document (or a packed
    context) is cut into prefix, middle and suffix and trained as `<fim_prefix> prefix
    <fim_suffix> suffix <fim_middle> middle` (PSM) or `<fim_prefix> <fim_suffix> suffix
    <fim_middle> prefix middle` (SPM), so the model learns to infill (docs/objectives.md)."""

    rate: float = 0.0
    """Fraction of documents (level=document) or packed contexts (level=context) transformed;
    0 = off. StarCoder and Code Llama use 0.5-0.9."""
    spm_rate: float = 0.5
    """Fraction of the transformed ones written suffix-prefix-middle (SPM) instead of
    prefix-suffix-middle (PSM)."""
    level: str = "document"
    """document: each document is transformed (or not) on its own, before packing, so no
    token is lost. context: the whole train.seq_length window (across documents) is transformed
    once; its untransformed windows end in 3 `pad_token`s (no loss) to keep the length."""
    prefix_token: str = "<fim_prefix>"
    """Sentinel before the prefix: a piece of the tokenizer (`python -m data_pipeline` reserves
    the four defaults, tokenizer.reserved_tokens)."""
    middle_token: str = "<fim_middle>"
    """Sentinel before the middle (the text to generate)."""
    suffix_token: str = "<fim_suffix>"
    """Sentinel before the suffix."""
    pad_token: str = "<fim_pad>"
    """Padding of level=context windows (never in the loss)."""

    def tokens(self) -> dict[str, str]:
        """role -> sentinel piece."""
        return {
            "prefix": self.prefix_token,
            "middle": self.middle_token,
            "suffix": self.suffix_token,
            "pad": self.pad_token,
        }


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=lambda: ["checkpoints/data/stdlib_code"])
    """Data-pipeline output directories (each with manifest.json), see docs/data_format.md."""
    weights: list[float] | None = None
    """Blending weights, one per path (None = proportional to each directory's tokens)."""
    split: str = "98,1,1"
    """train,valid,test proportions of the documents of every directory."""
    cache_dir: str | None = None
    """Folder for the dataset index cache, in a subfolder per data content (manifest sha256s),
    split, seq_length and seed; files are checked and never unpickled (None = build the indexes
    in memory on every rank; nothing is read from or written into the data directories)."""
    verify_checksums: bool = False
    """Also check every shard's sha256 from the manifest (slow for big data). Shard sizes are
    always checked against their .idx."""
    valid_paths: list[str] | None = None
    """objective=sft and llava: data directories whose examples all form the validation split
    (e.g. a held-out split prepared separately); data.split's valid share then goes unused.
    None = data.split."""
    fim: FimConfig = field(default_factory=FimConfig)
    """Fill-in-the-middle transformation of the training documents (objective=lm only)."""


@dataclass
class ObjectiveConfig:
    name: str = "lm"
    """lm: next-token prediction on documents packed across boundaries (megatron GPTDataset).
    sft: supervised fine-tuning on instruction data (`python -m data_pipeline
    input.format=chat|prompt_completion`): the loss counts only target tokens (the data's loss
    mask: assistant/completion tokens and their end marker) and is logged as the mean over the
    target tokens of the global batch; examples are packed into sequences with a block-diagonal
    attention mask (docs/finetuning.md).
    mlm: masked language modelling (RoBERTa-style dynamic masking) with megatron-core's
    BertModel (an encoder: bidirectional attention, local layer spec) on windows of the same
    data directories; the loss counts only the masked positions (docs/objectives.md).
    llava: image-text pretraining (megatron-core LLaVAModel: a CLIP-style ViT, an MLP projector
    and our GPT) on image-caption data (`python -m data_pipeline input=synthetic_images`, or
    input.format=image_text|webdataset|hf_images); the loss counts only the caption tokens
    (`vision.*`, docs/multimodal.md)."""
    pack: bool = True
    """sft: pack several examples into each train.seq_length sequence (no example attends to
    another; positions restart per example). false: one example per sequence, padded."""
    mask_rate: float = 0.15
    """mlm: probability that a (non-special) token is selected for prediction, drawn anew
    each time a window is read (dynamic masking)."""
    mask_token_rate: float = 0.8
    """mlm: of the selected tokens, the share replaced by `mask_token`."""
    random_token_rate: float = 0.1
    """mlm: of the selected tokens, the share replaced by a random vocabulary token; the rest
    (1 - mask_token_rate - random_token_rate) keep their token."""
    mask_token: str = "<mask>"
    """mlm: the mask piece of the tokenizer (`python -m data_pipeline` reserves it,
    tokenizer.reserved_tokens). CLS, SEP and padding are the tokenizer's <s>, </s> and <pad>."""


@dataclass
class VisionConfig:
    """objective=llava: the image encoder, the projector and the training stage (ignored by the
    other objectives). docs/multimodal.md."""

    image_size: int = 32
    """Image height = width in pixels the ViT reads; must equal the data's manifest
    image_text.image_size (the data pipeline resizes and crops every image to it)."""
    patch_size: int = 8
    """ViT patch width in pixels (image_size must be divisible by it): (image_size /
    patch_size)^2 image embeddings take the place of the <image> token in the sequence."""
    num_layers: int = 2
    """ViT transformer layers (bidirectional attention over the patches and a class token)."""
    hidden_size: int = 64
    """ViT width."""
    num_attention_heads: int = 4
    """ViT attention heads (divisible by parallel.tensor_model_parallel_size)."""
    ffn_hidden_size: int | None = None
    """ViT MLP width (None = 4 x vision.hidden_size)."""
    projector_ffn_hidden_size: int | None = None
    """Hidden width of the 2-layer MLP projector from ViT width to model.hidden_size (None =
    model.ffn_hidden_size or 4 x model.hidden_size)."""
    drop_class_token: bool = True
    """Drop the ViT's class-token output, so only the patch embeddings reach the LM."""
    stage: str = "joint"
    """align: train only the projector (the language model and the ViT are frozen; LLaVA's
    stage 1); joint: train the projector and the language model (and the ViT unless
    vision.freeze_vision; LLaVA's stage 2)."""
    freeze_vision: bool = False
    """stage=joint: keep the ViT frozen."""
    language_checkpoint: str | None = None
    """A text-pretraining run's checkpoint (a run dir, whose `latest` is taken, or an
    iter_XXXXXXX dir) whose GPT weights initialise the language model when this run starts
    from step 0 (not on resume; not with checkpoint.load). null: a randomly initialised LM."""
    blank_images: bool = False
    """Ablation: every image is replaced by an all-zero one, so the model sees the captions
    only (the text-only baseline of docs/multimodal.md; the sequence layout is unchanged)."""
    image_token: str = "<image>"
    """The tokenizer piece that marks the image's place in a sample (`python -m data_pipeline`
    reserves it: tokenizer.reserved_tokens); the model replaces it with the image embeddings."""

    def ffn_size(self) -> int:
        """Effective ViT MLP width."""
        return self.ffn_hidden_size or 4 * self.hidden_size

    def num_patches(self) -> int:
        """Image embeddings per image (the class token dropped or not aside)."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class PeftConfig:
    type: str = "none"
    """none: train every parameter. lora: low-rank adapters around the target linear layers
    (column/row tensor-parallel, correct under TP and sequence parallelism); the base weights are
    frozen and the optimizer holds only the adapters (docs/finetuning.md)."""
    rank: int = 8
    """LoRA rank r of the adapter matrices A (r x in) and B (out x r)."""
    alpha: float = 16.0
    """LoRA scaling numerator: the adapter adds (alpha / rank) * B @ A to the weight."""
    dropout: float = 0.0
    """Dropout on the adapter's input (0 = none)."""
    target_modules: list[str] = field(
        default_factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    )
    """megatron linear layers that get adapters: linear_qkv, linear_proj (attention), linear_fc1,
    linear_fc2 (MLP)."""


@dataclass
class OptimConfig:
    optimizer: str = "adam"
    """AdamW (decoupled weight decay) or SGD."""
    lr: float = 3e-3
    """Peak learning rate (after warmup)."""
    min_lr: float = 3e-4
    """Final learning rate of the decay."""
    warmup_steps: int = 10
    """Linear warmup steps from 0 to lr."""
    decay_style: str = "cosine"
    """Decay shape after warmup."""
    decay_steps: int | None = None
    """Steps of warmup + decay (None = train.max_steps)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping (0 = off)."""
    initial_loss_scale: float = 65536.0
    """fp16 only: starting dynamic loss scale."""
    min_loss_scale: float = 1.0
    """fp16 only: the dynamic loss scale never goes below this."""
    loss_scale_window: int = 1000
    """fp16 only: good steps before the loss scale doubles."""
    hysteresis: int = 2
    """fp16 only: overflowing steps tolerated before the scale is halved."""
    loss_scale: float | None = None
    """fp16 only: a static loss scale instead of dynamic scaling (None = dynamic)."""


@dataclass
class TrainConfig:
    micro_batch_size: int = 4
    """Sequences per micro-batch per data-parallel rank."""
    global_batch_size: int = 8
    """Sequences per optimizer step; accumulation = global / (micro x DP)."""
    seq_length: int = 64
    """Tokens per sequence."""
    max_steps: int = 20
    """Optimizer steps to train."""
    max_tokens: int | None = None
    """Token budget; when set, max_steps = ceil(max_tokens / (global_batch x seq_length))."""
    stop_at_step: int | None = None
    """Stop early at this step (saving a checkpoint) without changing the LR schedule, e.g. to
    split a run into several jobs; a later run with the same config resumes to max_steps."""
    log_interval: int = 1
    """Log (console, metrics.jsonl, W&B) every N steps."""
    activation_recompute: str = "none"
    """Recompute activations in backward: selective (attention core) or full (every layer)."""
    max_skipped_steps: int = 5
    """Abort after this many consecutive skipped (non-finite / overflowing) steps."""

    def steps_for(self, tokens_per_step: int) -> int:
        """max_steps, or the step count the token budget gives."""
        if self.max_tokens is None:
            return self.max_steps
        return -(-self.max_tokens // tokens_per_step)


@dataclass
class EvalConfig:
    interval: int = 10
    """Validate every N steps (0 = never; the end of training always validates)."""
    iters: int = 2
    """Validation batches (of global_batch_size sequences) per evaluation."""
    at_start: bool = False
    """Also validate once before the first step of a run that starts at step 0 (a `step 0`
    row in metrics.jsonl): the starting model's loss, e.g. a fine-tuning's base model."""


@dataclass
class WandbConfig:
    mode: str = "offline"
    """W&B mode (rank 0 only). Offline runs can be synced later with `wandb sync`."""
    project: str = "pretrain"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team/user); None = default."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings."""
    peak_tflops: float | None = None
    """Peak dense TFLOP/s of one device for MFU (None = known GPU table; CPU = no MFU)."""
    level: str = "INFO"
    """Python logging level on rank 0."""
    report: bool = True
    """Write report.png at the end of training."""
    tensorboard: bool = False
    """Also write the metrics rows' scalars as TensorBoard events to ${run.dir}/tensorboard/
    (rank 0; a resumed job appends and hides the steps it replays)."""


@dataclass
class SampleConfig:
    """End-of-training text sample (`pretrain/sample.py`; `pretrain.generate` shares it)."""

    enabled: bool = True
    """Generate a text sample with the trained model at the end of training."""
    prompt: str = "def main(args):\n"
    """Prompt text, encoded exactly as the data's documents (SentencePiece ids, no BOS). End it
    at a natural token boundary such as a newline: a trailing space is a token of its own that
    the data rarely has, so the model continues it badly."""
    max_new_tokens: int = 32
    """Tokens to generate (fewer if EOD comes first or train.seq_length is reached)."""
    temperature: float = 0.8
    """0 = greedy; otherwise softmax temperature."""
    top_k: int = 40
    """With temperature > 0: sample among the k most likely tokens (0 = all)."""
    suffix: str | None = None
    """With data.fim.rate > 0: the sample infills the middle between `prompt` (the prefix) and
    this suffix (None = a plain continuation of `prompt`). objective=mlm ignores it: its sample
    fills every objective.mask_token in `prompt`."""


@dataclass
class CheckpointConfig:
    save_interval: int = 0
    """Save every N steps (0 = never by interval)."""
    save_interval_minutes: float = 0.0
    """Also save when this much wall-clock passed since the last save (0 = off)."""
    keep_last: int = 2
    """Keep the newest N complete checkpoints (0 = keep all)."""
    async_save: bool = False
    """Write checkpoints in the background."""
    resume: str = "auto"
    """'auto': continue from ${run.dir}/latest if present; 'never'."""
    load: str | None = None
    """Start from this checkpoint dir (iter_XXXXXXX) instead."""
    weights_only: bool = False
    """With load: take only model weights, fresh optimizer/state."""
    save_at_end: bool = True
    """Save when training finishes."""
    verify_checksums: bool = True
    """Before loading, hash every file of the checkpoint (the ranks share the work) and compare
    with the checksums.json its save recorded; a mismatch counts as damage (resume=auto falls
    back to an older checkpoint). Sizes and structure are checked either way."""


@dataclass
class ClusterConfig:
    num_gpus: int | None = None
    """Devices of the job, for `python -m pretrain.plan` and the pre-launch checks (None: the
    launched world size; the planner alone: gpus_per_node)."""
    gpu: str | None = None
    """GPU type of the memory and time predictions: h100, h200, a100, a100-40gb, b200, l40s, ...
    (`python -m pretrain.plan --help` lists them); None: the visible CUDA device; the planner
    alone falls back to h100, training and the launchers then skip the memory check."""
    gpus_per_node: int = 8
    """GPUs per node: TP and the first ranks of each group stay inside a node."""
    intra_node_gbps: float = 3600.0
    """Per-GPU bandwidth inside a node, Gbit/s (H100 NVLink 4: 450 GB/s per direction)."""
    inter_node_gbps: float = 400.0
    """Per-GPU bandwidth between nodes, Gbit/s (one 400G InfiniBand NIC per GPU)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for the predicted step time (0-1)."""
    overhead_gib: float = 3.0
    """Framework memory per GPU, GiB: CUDA context, NCCL buffers, allocator fragmentation."""
    check: str = "warn"
    """What training and the launchers do before starting when the plan predicts that the
    layout does not fit in GPU memory: warn, error (config error, exit 2) or off."""


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run name and directory."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Where a multirun (`-m`) puts its points (ignored by a single run)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model architecture (`model=<preset>`)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallelism degrees (`parallel=<preset>`)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """What the loss trains (`objective=lm|sft|mlm|llava`)."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """Parameter-efficient fine-tuning (`peft=none|lora`)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """objective=llava: image encoder, projector and training stage (`vision.*`)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batch sizes, length, steps."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Console, metrics.jsonl, W&B."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing (see README.md ("Checkpoints"))."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """End-of-training text sample."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The machines, for the preflight planner (`python -m pretrain.plan`, docs/planner.md)."""
    seed: int = 1234
    """Seed of model init, dropout and the data order."""
    precision: Precision = "fp32"
    """fp32, bf16 (bf16 params, fp32 main weights) or fp16 (with dynamic loss scaling)."""


GROUP_SCHEMAS = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "logging": LoggingConfig,
    "checkpoint": CheckpointConfig,
    "objective": ObjectiveConfig,
    "peft": PeftConfig,
}


def register_configs() -> None:
    """Register `base_pretrain` and each group's `base_<group>` schema in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="base_pretrain", node=PretrainConfig)
    for group, node in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"base_{group}", node=node)
