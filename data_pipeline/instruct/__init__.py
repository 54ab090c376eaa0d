"""Instruction data (chat, prompt/completion): templates, loss masks, the embedded stdlib corpus."""
