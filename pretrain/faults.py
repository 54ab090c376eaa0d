"""Preemption handling: SIGTERM/SIGUSR1 -> save at the next step boundary, exit EXIT_PREEMPTED."""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 75
"""Exit code after a preemption-triggered save (EX_TEMPFAIL); launch scripts requeue on it."""


class PreemptionHandler:
    """Records SIGTERM/SIGUSR1; `should_stop()` answers the same on every rank."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signals = signals
        self._flag = threading.Event()

    def install(self) -> None:
        for sig in self.signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._flag.set()

    def should_stop(self) -> bool:
        return self._flag.is_set()
