"""objective=llava: image-text pretraining with megatron-core's LLaVAModel (docs/multimodal.md)."""
