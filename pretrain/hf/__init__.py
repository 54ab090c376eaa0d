"""Hugging Face conversion: `mapping` (megatron <-> HF weights, both directions), `export`
(checkpoint -> transformers folder) and `importer` (Llama folder -> model-only checkpoint).

The commands are `python -m pretrain.export_hf` and `python -m pretrain.import_hf`.
"""
