"""The mutable training state that checkpoints carry (everything else is rebuilt from config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """Progress counters; resume = load this, then rebuild data iterators at consumed_samples."""

    step: int = 0
    """Completed optimizer steps (skipped steps included)."""
    consumed_samples: int = 0
    """Training sequences consumed (global), the data iterators' position."""
    consumed_tokens: int = 0
    """Training tokens consumed (global)."""
    skipped_steps: int = 0
    """Consecutive skipped steps (non-finite loss/grad or fp16 overflow); reset by a good step."""
    wandb_run_id: str | None = None
    """W&B run id, so a resumed run continues the same W&B run."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Inverse of to_dict; unknown keys are ignored (forward compatibility)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
