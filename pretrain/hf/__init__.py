"""Hugging Face conversion: `mapping` (megatron GPT <-> HF weights, both directions), `bert`
(objective=mlm BertModel -> MegatronBertForMaskedLM), `tokenizer` (SentencePiece -> a fast
tokenizer), `export` (checkpoint -> transformers folder) and `importer` (Llama folder ->
model-only checkpoint).

The commands are `python -m pretrain.export_hf` and `python -m pretrain.import_hf`.
"""
