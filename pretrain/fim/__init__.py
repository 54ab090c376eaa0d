"""Fill-in-the-middle for objective=lm (data.fim.*, docs/objectives.md): `transform` (the pure
token reordering), `dataset` (the megatron GPTDataset subclasses `pretrain.data` uses when
data.fim.rate > 0) and `infill` (prompts that make a FIM-trained model fill a gap)."""
