"""Fill-in-the-middle for objective=lm (data.fim.*, docs/objectives.md)."""
