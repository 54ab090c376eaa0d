"""Quiet access to megatron-core's indexed_dataset module (its import logs and warns a lot).

Importing it costs seconds: torch plus the whole `megatron.core` package (tensor_parallel,
transformer, fusions with torch.compile decorators), 5-10 s on 2 cores. That was the silent gap
between the "encoder" and "shards planned" log lines; `WriterImport` times it, logs it, and lets
the tokenizer step run it alongside training (tokenizer_step.ensure_tokenizer).
"""

from __future__ import annotations

import logging
import time
import warnings
from types import ModuleType

log = logging.getLogger(__name__)
INDEXED_DATASET = "megatron.core.datasets.indexed_dataset"
"""Module name of megatron-core's indexed dataset reader/writer."""


def indexed_dataset() -> ModuleType:
    """`megatron.core.datasets.indexed_dataset`, imported without the TE/Apex/FSDP chatter."""
    logging.getLogger("megatron").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset as module
    return module


class WriterImport:
    """The one-off import of indexed_dataset (the .bin/.idx writer), timed and logged once."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        """How long the import took (None before load(); ~0 when already imported)."""
        self.ended = 0.0
        """time.monotonic() at the end of the import."""
        self.alongside = ""
        """What ran in parallel with the import ('' for nothing)."""
        self.other_ended: float | None = None
        """time.monotonic() at the end of the work alongside (set by whoever ran it)."""
        self.other_s = 0.0
        """Seconds of tokenizer training in this job (set by the tokenizer step; 0: none)."""

    def load(self, alongside: str = "") -> ModuleType:
        """Import the module (once), logging the time it took; return it."""
        if self.seconds is None:
            with_what = f", alongside {alongside}" if alongside else ""
            log.info(
                "importing megatron-core (torch + megatron.core), the .bin/.idx writer%s", with_what
            )
            started = time.monotonic()
            indexed_dataset()
            self.ended = time.monotonic()
            self.seconds, self.alongside = self.ended - started, alongside
            log.info("megatron-core imported in %.1f s", self.seconds)
        return indexed_dataset()

    def waited_s(self) -> float:
        """Seconds the import added to the job: all of it, or what outlasted the work alongside."""
        if self.seconds is None:
            return 0.0
        if self.other_ended is None:
            return self.seconds
        return max(0.0, min(self.seconds, self.ended - self.other_ended))

    def timings(self) -> dict[str, float]:
        """Manifest timings: the import's time, what it added, and the training time."""
        return {
            "megatron_import_s": round(self.seconds or 0.0, 3),
            "megatron_wait_s": round(self.waited_s(), 3),
            "tokenizer_train_s": round(self.other_s, 3),
        }
