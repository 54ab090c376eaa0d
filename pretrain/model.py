"""GPT model construction on megatron-core: TransformerConfig + GPTModel chunks.

`build_model` is reusable outside training (checkpoint export, tests): it needs only an
initialised `parallel_state` (see `pretrain.parallel.init_distributed`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from pretrain.config import ModelConfig, ParallelConfig, Precision

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""torch dtype of each precision name."""


def torch_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of a precision name."""
    return DTYPES[precision]


def have_transformer_engine() -> bool:
    """Transformer Engine importable and CUDA present (its layers need a GPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def build_transformer_config(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    precision: Precision = "fp32",
    activation_recompute: str = "none",
    use_cpu_initialization: bool | None = None,
    calculate_per_token_loss: bool = False,
):
    """Map our ModelConfig/ParallelConfig onto megatron's TransformerConfig (1:1 names).

    `calculate_per_token_loss` (objective=sft): megatron's per-token loss path, the loss
    function returns (sum, token count) and gradients are divided by the global batch's target
    tokens (see pretrain/sft/loss.py); False keeps the per-micro-batch mean of objective=lm.
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = torch_dtype(precision)
    recompute = {"none": {}, "selective": {"recompute_granularity": "selective"}}.get(
        activation_recompute,
        {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
    )
    if use_cpu_initialization is None:
        # CPU: layout-independent initial weights (see _seeded_layer_class). GPU: megatron's
        # on-device init (fast for billions of parameters; depends on the TP layout).
        use_cpu_initialization = not torch.cuda.is_available()
    pp = parallel_cfg.pipeline_model_parallel_size
    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.kv_heads(),
        ffn_hidden_size=model_cfg.ffn_size(),
        kv_channels=model_cfg.hidden_size // model_cfg.num_attention_heads,
        normalization=model_cfg.normalization,
        layernorm_epsilon=model_cfg.layernorm_epsilon,
        gated_linear_unit=model_cfg.activation == "swiglu",
        activation_func=F.silu if model_cfg.activation == "swiglu" else F.gelu,
        add_bias_linear=model_cfg.add_bias_linear,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=parallel_cfg.tensor_model_parallel_size,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_model_parallel_size,
        sequence_parallel=parallel_cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu_initialization=use_cpu_initialization,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        deallocate_pipeline_outputs=True,
        # gloo matches point-to-point messages per peer in posting order, so the batched
        # isend/irecv of megatron mixes activations and gradients when two pipeline ranks talk
        # both ways (interleaved PP=2). The unbatched path keeps the directions apart.
        batch_p2p_comm=torch.cuda.is_available(),
        calculate_per_token_loss=calculate_per_token_loss,
        **recompute,
    )


_INIT_SEED_STRIDE = 7919


def _seeded_layer_class():
    """TransformerLayer whose CPU init RNG is seeded by its global layer number.

    With `use_cpu_initialization`, megatron draws every weight from the CPU generator in build
    order, so a pipeline stage that builds layers 3-4 would draw different numbers than one rank
    building layers 1-4. Seeding each layer from (seed, global layer number) inside a forked RNG
    makes the initial weights identical for every TP, PP and VPP layout.
    """
    from megatron.core.transformer.transformer_layer import (
        TransformerLayer,
        get_transformer_layer_offset,
    )

    class SeededTransformerLayer(TransformerLayer):
        def __init__(self, config, submodules, layer_number: int = 1, *args, **kwargs):
            offset = get_transformer_layer_offset(config, kwargs.get("vp_stage"))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(
                    torch.initial_seed() + _INIT_SEED_STRIDE * (layer_number + offset)
                )
                super().__init__(config, submodules, layer_number, *args, **kwargs)

    return SeededTransformerLayer


def _reinit_output_layer(model, config, padded_vocab: int, tp_rank: int, tp: int) -> None:
    """Untied output layer: init from its own seed, sliced for this TP rank (layout-free)."""
    weight = model.output_layer.weight
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(torch.initial_seed() + _INIT_SEED_STRIDE * (config.num_layers + 1))
        master = torch.empty(padded_vocab, config.hidden_size, dtype=torch.float32)
        config.init_method(master)  # GPTModel's output layer uses config.init_method
        rows = padded_vocab // tp
        weight.copy_(master[tp_rank * rows : (tp_rank + 1) * rows].to(weight.dtype))


def build_layer_spec(config, te: bool | None = None):
    """Transformer Engine layer spec when usable on GPU, megatron's local spec otherwise.

    The local spec gets `compat.SequenceParallelNorm`, a torch norm that supports sequence
    parallelism (megatron's torch-norm fallback refuses it).
    """
    from megatron.core.models.gpt import gpt_layer_specs

    from pretrain.compat import SequenceParallelNorm

    if te is None:
        te = have_transformer_engine()
    if te:
        spec = gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
        spec.module = _seeded_layer_class()
        return spec, None
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization=config.normalization)
    spec.module = _seeded_layer_class()
    spec.submodules.input_layernorm = SequenceParallelNorm
    spec.submodules.pre_mlp_layernorm = SequenceParallelNorm
    return spec, SequenceParallelNorm


def _block_spec(config, layer_spec, final_norm, vp_stage: int | None):
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    if final_norm is None:
        return layer_spec
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer_spec] * num_layers, layer_norm=final_norm)


def chunk_stages(parallel_cfg: ParallelConfig) -> list[tuple[int | None, bool, bool]]:
    """(vp_stage, pre_process, post_process) of each model chunk this rank builds (one per
    virtual pipeline stage; vp_stage None without VPP). Needs an initialised parallel_state."""
    from megatron.core import parallel_state

    vpp = parallel_cfg.virtual_pipeline_model_parallel_size
    stages = list(range(vpp)) if vpp else [None]
    return [
        (
            stage,
            parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
        )
        for stage in stages
    ]


def build_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    vocab_size: int,
    seq_length: int,
    precision: Precision = "fp32",
    activation_recompute: str = "none",
    use_cpu_initialization: bool | None = None,
    calculate_per_token_loss: bool = False,
) -> list[torch.nn.Module]:
    """Build this rank's GPTModel chunks (one per virtual pipeline stage), unwrapped.

    `vocab_size` is the tokenizer's; the embedding is padded for TP divisibility. With
    `use_cpu_initialization` (default) the initial weights for one seed are identical for every
    TP size. On GPU the chunks are moved to the current CUDA device. For bf16/fp16 the
    parameters are created in that dtype (megatron's Float16Module is applied by the caller
    that wraps for training, see `wrap_model`).
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    config = build_transformer_config(
        model_cfg,
        parallel_cfg,
        precision,
        activation_recompute,
        use_cpu_initialization,
        calculate_per_token_loss,
    )
    layer_spec, final_norm = build_layer_spec(config)
    padded = model_cfg.padded_vocab_size(vocab_size, parallel_cfg.tensor_model_parallel_size)
    chunks = []
    for stage, pre_process, post_process in chunk_stages(parallel_cfg):
        model = GPTModel(
            config=config,
            transformer_layer_spec=_block_spec(config, layer_spec, final_norm, stage),
            vocab_size=padded,
            max_sequence_length=model_cfg.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=model_cfg.share_embeddings_and_output_weights,
            position_embedding_type=model_cfg.position_embedding_type,
            rotary_base=model_cfg.rotary_base,
            vp_stage=stage,
        )
        model.model_type = _encoder_or_decoder()
        untied = not model_cfg.share_embeddings_and_output_weights
        if model.post_process and untied and config.use_cpu_initialization:
            _reinit_output_layer(
                model,
                config,
                padded,
                parallel_state.get_tensor_model_parallel_rank(),
                parallel_cfg.tensor_model_parallel_size,
            )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks


def wrap_model(
    chunks: list[torch.nn.Module], parallel_cfg: ParallelConfig, precision: Precision
) -> list[torch.nn.Module]:
    """Float16Module (bf16/fp16) + megatron DistributedDataParallel, one per chunk."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    config = chunks[0].config
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel_cfg.overlap_grad_reduce,
        overlap_param_gather=parallel_cfg.overlap_param_gather,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    wrapped = []
    for index, chunk in enumerate(chunks):
        module = Float16Module(config, chunk) if precision != "fp32" else chunk
        wrapped.append(
            DistributedDataParallel(
                config=config,
                ddp_config=ddp_config,
                module=module,
                disable_bucketing=index > 0,
            )
        )
    return wrapped


def _encoder_or_decoder():
    from megatron.core.enums import ModelType

    return ModelType.encoder_or_decoder


def count_parameters(model_cfg: ModelConfig, padded_vocab: int) -> int:
    """Total parameters of the full (unsharded) model, for FLOP/s and logs."""
    h, layers, ffn = model_cfg.hidden_size, model_cfg.num_layers, model_cfg.ffn_size()
    kv = model_cfg.kv_heads() * (h // model_cfg.num_attention_heads)
    bias = model_cfg.add_bias_linear
    attn = h * (h + 2 * kv) + h * h + (h + 2 * kv + h if bias else 0)
    mlp_in = ffn * (2 if model_cfg.activation == "swiglu" else 1)
    mlp = h * mlp_in + ffn * h + ((mlp_in + h) if bias else 0)
    norm = h * (2 if model_cfg.normalization == "LayerNorm" else 1)  # weight (+ bias)
    emb = padded_vocab * h
    if model_cfg.position_embedding_type == "learned_absolute":
        emb += model_cfg.max_position_embeddings * h
    out = 0 if model_cfg.share_embeddings_and_output_weights else padded_vocab * h
    return layers * (attn + mlp + 2 * norm) + emb + out + norm  # + the final norm


def flops_per_token(model_cfg: ModelConfig, padded_vocab: int, seq_length: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params + output layer) + attention.

    The standard estimate (Kaplan et al.; PaLM appendix B): 6N for the matmuls of forward and
    backward, plus 6 x layers x hidden x seq for the attention scores (causal half counted as
    full, as Megatron-LM does). Recompute is not counted (model FLOPs, not hardware FLOPs).
    """
    h, layers = model_cfg.hidden_size, model_cfg.num_layers
    n = count_parameters(model_cfg, padded_vocab) - padded_vocab * h
    if model_cfg.position_embedding_type == "learned_absolute":
        n -= model_cfg.max_position_embeddings * h
    n += padded_vocab * h
    return 6.0 * n + 6.0 * layers * h * seq_length
