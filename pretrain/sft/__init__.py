"""Supervised fine-tuning data: instruction examples with loss masks, packed into sequences."""
