"""LLaVA chunks on megatron-core: `LLaVAModel` = CLIP-style ViT + MLP projector + our GPT.

One chunk per virtual pipeline stage, as `pretrain.model.build_model`: every chunk has the
language model (`add_decoder`, a GPTModel with our layer spec), the ViT and the projector live
only on the first pipeline stage (`add_encoder` = that chunk's `pre_process`), as megatron puts
them. The language model's TransformerConfig is our GPT's (`build_transformer_config`, the same
CPU compatibility layer); the ViT's is built from `vision.*` with one pipeline stage (it is
never split), its layers use megatron's local ViT spec with bidirectional attention
(`AttnMaskType.no_mask`: the local spec says `causal`, which would let a patch see only the
patches before it).

Layout-independent CPU initialisation (TP=2 equals TP=1 at init, PP=2 equals PP=1): the
language model is built exactly as a GPTModel chunk (per-layer seeds, the untied output layer
from its own seed); the ViT and the projector are each built inside a forked RNG seeded from
their own offset, so what the first stage builds before them does not matter.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator

import torch

from pretrain.config import ModelConfig, ParallelConfig, PretrainConfig, VisionConfig
from pretrain.model import (
    _INIT_SEED_STRIDE,
    _block_spec,
    _encoder_or_decoder,
    _reinit_output_layer,
    build_layer_spec,
    build_transformer_config,
    chunk_stages,
    flops_per_token,
)

_VIT_SEED_OFFSET = 10_001
"""Seed offset (x _INIT_SEED_STRIDE) of the ViT's initial weights."""
_PROJECTOR_SEED_OFFSET = 10_002
"""Seed offset (x _INIT_SEED_STRIDE) of the projector's initial weights."""


def image_seq_len(vision: VisionConfig) -> int:
    """Embeddings that replace the one `<image>` token: the patches (+ the class token)."""
    return vision.num_patches() + (0 if vision.drop_class_token else 1)


def combined_length(cfg: PretrainConfig) -> int:
    """Positions the language model sees: train.seq_length - 1 + the image embeddings."""
    return cfg.train.seq_length - 1 + image_seq_len(cfg.vision)


def vision_model_config(model_cfg: ModelConfig, vision: VisionConfig) -> ModelConfig:
    """The ViT as a ModelConfig: pre-LayerNorm, GELU MLP with biases (CLIP)."""
    return ModelConfig(
        name="vit",
        num_layers=vision.num_layers,
        hidden_size=vision.hidden_size,
        num_attention_heads=vision.num_attention_heads,
        ffn_hidden_size=vision.ffn_size(),
        normalization="LayerNorm",
        activation="gelu",
        add_bias_linear=True,
        hidden_dropout=model_cfg.hidden_dropout,
        attention_dropout=model_cfg.attention_dropout,
        init_method_std=model_cfg.init_method_std,
        layernorm_epsilon=model_cfg.layernorm_epsilon,
    )


def projector_model_config(model_cfg: ModelConfig, vision: VisionConfig) -> ModelConfig:
    """The 2-layer MLP projector (ViT width -> ffn -> model.hidden_size, GELU, biases)."""
    return dataclasses.replace(
        model_cfg,
        name="projector",
        ffn_hidden_size=vision.projector_ffn_hidden_size or model_cfg.ffn_size(),
        activation="gelu",
        add_bias_linear=True,
    )


def _one_stage(parallel_cfg: ParallelConfig) -> ParallelConfig:
    """The ViT and the projector are never pipelined (they sit on the first stage)."""
    return dataclasses.replace(
        parallel_cfg, pipeline_model_parallel_size=1, virtual_pipeline_model_parallel_size=None
    )


def vit_layer_spec():
    """megatron's local ViT layer spec with bidirectional attention and our torch norms."""
    from megatron.core.models.vision.vit_layer_specs import get_vit_layer_with_local_spec
    from megatron.core.transformer.enums import AttnMaskType

    from pretrain.compat import SequenceParallelNorm

    spec = copy.deepcopy(get_vit_layer_with_local_spec())
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.no_mask
    spec.submodules.input_layernorm = SequenceParallelNorm
    spec.submodules.pre_mlp_layernorm = SequenceParallelNorm
    return spec


def projector_spec():
    """The projector's MLP submodules (local column/row-parallel linears)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec

    return get_mlp_module_spec(use_te=False).submodules


@contextlib.contextmanager
def _seeded(offset: int) -> Iterator[None]:
    """A forked CPU RNG seeded from (initial seed, offset); on CPU `t.cuda()` is a no-op
    meanwhile (CLIPViTModel puts its position ids on CUDA in __init__)."""
    from pretrain import compat

    cuda_free = compat.cuda_tensor_names() if not torch.cuda.is_available() else None
    with torch.random.fork_rng(devices=[]), cuda_free or contextlib.nullcontext():
        torch.manual_seed(torch.initial_seed() + _INIT_SEED_STRIDE * offset)
        yield


@contextlib.contextmanager
def _seeded_encoder() -> Iterator[None]:
    """While LLaVAModel is built, its ViT and projector classes are seeded subclasses (the
    ViT's pre-norm is our torch LayerNorm: CLIPViTModel's default needs TE); restored after."""
    from megatron.core.models.multimodal import llava_model

    from pretrain.compat import SequenceParallelNorm

    vit_cls, projector_cls = llava_model.CLIPViTModel, llava_model.MultimodalProjector

    class SeededViT(vit_cls):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("ln_pre_impl", SequenceParallelNorm)
            with _seeded(_VIT_SEED_OFFSET):
                super().__init__(*args, **kwargs)

    class SeededProjector(projector_cls):
        def __init__(self, *args, **kwargs):
            with _seeded(_PROJECTOR_SEED_OFFSET):
                super().__init__(*args, **kwargs)

    llava_model.CLIPViTModel, llava_model.MultimodalProjector = SeededViT, SeededProjector
    try:
        yield
    finally:
        llava_model.CLIPViTModel, llava_model.MultimodalProjector = vit_cls, projector_cls


def _encoder_configs(cfg: PretrainConfig, use_cpu_initialization: bool | None):
    """(ViT TransformerConfig with vision_model_type=clip, projector TransformerConfig)."""
    t, one = cfg.train, _one_stage(cfg.parallel)
    vit = build_transformer_config(
        vision_model_config(cfg.model, cfg.vision),
        one,
        cfg.precision,
        t.activation_recompute,
        use_cpu_initialization,
    )
    vit.vision_model_type = "clip"
    projector = build_transformer_config(
        projector_model_config(cfg.model, cfg.vision),
        one,
        cfg.precision,
        "none",
        use_cpu_initialization,
    )
    return vit, projector


def apply_stage(chunks: list[torch.nn.Module], vision: VisionConfig) -> None:
    """vision.stage=align: only the projector trains; joint: all but a frozen ViT
    (vision.freeze_vision). Before DDP: frozen parameters get no gradient buffer and no
    optimizer state (megatron skips parameters with requires_grad=False)."""
    align = vision.stage == "align"
    for chunk in chunks:
        chunk.freeze(
            freeze_language_model=align,
            freeze_vision_model=align or vision.freeze_vision,
            freeze_vision_projection=False,
        )


def build_llava_model(
    cfg: PretrainConfig,
    vocab_size: int,
    image_token_id: int | None = None,
    use_cpu_initialization: bool | None = None,
) -> list[torch.nn.Module]:
    """This rank's LLaVAModel chunks (one per virtual pipeline stage), unwrapped, with the
    stage's frozen parameters (`apply_stage`).

    `vocab_size` is the tokenizer's (padded for TP); `image_token_id` the tokenizer's id of
    vision.image_token (None: megatron's default -200, for callers that pass
    `image_token_index` to forward). Language loss is megatron's per-token path
    (calculate_per_token_loss). With PP the combined sequence is padded by megatron to the
    model's maximum length: set to the combined length, so every stage sends the same shape.
    """
    from megatron.core import parallel_state
    from megatron.core.models.multimodal.llava_model import (
        DEFAULT_IMAGE_TOKEN_INDEX,
        LLaVAModel,
    )

    m, p, v, t = cfg.model, cfg.parallel, cfg.vision, cfg.train
    config = build_transformer_config(
        m,
        p,
        cfg.precision,
        t.activation_recompute,
        use_cpu_initialization,
        calculate_per_token_loss=True,
    )
    vit_config, projector_config = _encoder_configs(cfg, use_cpu_initialization)
    layer_spec, final_norm = build_layer_spec(config, te=False)
    padded = m.padded_vocab_size(vocab_size, p.tensor_model_parallel_size)
    chunks = []
    for stage, pre_process, post_process in chunk_stages(p):
        with _seeded_encoder():
            model = LLaVAModel(
                language_transformer_config=config,
                language_transformer_layer_spec=_block_spec(config, layer_spec, final_norm, stage),
                language_vocab_size=padded,
                language_max_sequence_length=m.max_position_embeddings,
                vision_transformer_config=vit_config,
                vision_transformer_layer_spec=vit_layer_spec(),
                drop_vision_class_token=v.drop_class_token,
                vision_projection_config=projector_config,
                vision_projection_layer_spec=projector_spec(),
                vision_projection_type="mlp",
                share_embeddings_and_output_weights=m.share_embeddings_and_output_weights,
                language_position_embedding_type=m.position_embedding_type,
                pre_process=pre_process,
                post_process=post_process,
                add_encoder=pre_process,
                add_decoder=True,
                img_h=v.image_size,
                img_w=v.image_size,
                patch_dim=v.patch_size,
                language_rotary_base=m.rotary_base,
                image_token_index=(
                    DEFAULT_IMAGE_TOKEN_INDEX if image_token_id is None else image_token_id
                ),
                vp_stage=stage,
            )
        model.model_type = _encoder_or_decoder()
        if p.pipeline_model_parallel_size > 1:
            model._language_max_sequence_length = combined_length(cfg)
        untied = not m.share_embeddings_and_output_weights
        if post_process and untied and config.use_cpu_initialization:
            _reinit_output_layer(
                model.language_model,
                config,
                padded,
                parallel_state.get_tensor_model_parallel_rank(),
                p.tensor_model_parallel_size,
            )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
            if model.vision_model is not None:
                model.vision_model.position_ids = model.vision_model.position_ids.cuda()
        chunks.append(model)
    apply_stage(chunks, v)
    return chunks


def llava_flops_per_token(cfg: PretrainConfig, padded_vocab: int) -> float:
    """Training FLOPs per text token (approximate, for TFLOP/s and MFU): the GPT estimate over
    the combined sequence plus the ViT (6N over its matmuls + attention scores over the
    patches) and the projector, per sample, divided by the sample's train.seq_length tokens."""
    seq, combined = cfg.train.seq_length, combined_length(cfg)
    lm = flops_per_token(cfg.model, padded_vocab, combined) * combined
    v = cfg.vision
    vit_seq = v.num_patches() + 1
    h, ffn = v.hidden_size, v.ffn_size()
    vit = v.num_layers * (6.0 * (4 * h * h + 2 * h * ffn) * vit_seq + 6.0 * h * vit_seq**2)
    proj_ffn = v.projector_ffn_hidden_size or cfg.model.ffn_size()
    projector = 6.0 * (h * proj_ffn + proj_ffn * cfg.model.hidden_size) * image_seq_len(v)
    return (lm + vit + projector) / seq
