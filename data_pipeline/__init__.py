"""Offline data preparation: raw corpora -> SentencePiece -> Megatron indexed datasets.

Entry points: `python -m data_pipeline` (Hydra), `python -m data_pipeline.inspect DIR`,
`python -m data_pipeline.merge`, and `data_pipeline.prepare.run_prepare(PrepareConfig(...))`.
See README.md ("Data preparation"); the output layout is specified in docs/data_format.md.
"""
