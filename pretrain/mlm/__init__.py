"""objective=mlm: masked language modelling with megatron-core's BertModel (docs/objectives.md)."""
