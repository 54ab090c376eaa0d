"""Image-text data: image-caption pairs -> tar shards in the webdataset layout (+ offset index),
a tokenizer and manifest.json (docs/data_format.md, "Image-text data"). Entry: `job`, reached
through `data_pipeline.prepare.run_prepare` for the image formats of `input.format`."""
