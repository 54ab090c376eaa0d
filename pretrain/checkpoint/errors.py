"""Checkpoint errors and the exit codes of the failures that end a run.

- `CheckpointError` (a `ConfigError`, exit 2): a checkpoint cannot be used as asked (missing,
  torn, damaged, incompatible with the config); `DamagedCheckpoint` names the damaged file,
  `UnsafeCheckpoint` a file that would execute code when loaded.
- `CheckpointExit` (a `SystemExit`): a save that must not or cannot happen ends the run with
  its own exit code and a one-line message on stderr, without a traceback, from any entry
  point: `CheckpointWriteError` (exit 74: disk full, quota, I/O error while writing) and
  `NonFiniteWeights` (exit 65: the model has NaN/Inf weights, nothing is saved).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.config import ConfigError

EXIT_CHECKPOINT_WRITE = 74
"""Exit code when a checkpoint cannot be written (disk full, quota, I/O error; BSD EX_IOERR)."""
EXIT_NON_FINITE_WEIGHTS = 65
"""Exit code when the weights to save are not finite (nothing saved; BSD EX_DATAERR)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used as asked; the message says what differs and how to fix it."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint's files are missing, truncated, corrupt or fail their checksums."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        """The checkpoint directory."""
        self.problems = problems
        """One line per damaged file, each naming the file."""
        super().__init__(f"damaged checkpoint {path}: {'; '.join(problems)}")


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file would run code, or read outside its tensors, when loaded: refused,
    never treated as damage (no fallback to an older checkpoint)."""


class CheckpointExit(SystemExit):
    """Ends the process with `exit_code`; `report()` prints the one-line message first."""

    exit_code = 1
    """The process exit status."""
    label = "checkpoint error"
    """Prefix of the message on stderr."""

    def __init__(self, message: str) -> None:
        super().__init__(self.exit_code)
        self.message = message
        """What happened, naming the path (also `str(exc)`)."""

    def __str__(self) -> str:
        return self.message

    def report(self) -> CheckpointExit:
        """Print `pretrain: <label>: <message>` to stderr; returns self (`raise exc.report()`)."""
        print(f"pretrain: {self.label}: {self.message}", file=sys.stderr, flush=True)
        return self


class CheckpointWriteError(CheckpointExit):
    """A checkpoint could not be written; the previous complete one is kept."""

    exit_code = EXIT_CHECKPOINT_WRITE
    label = "checkpoint not saved"


class NonFiniteWeights(CheckpointExit):
    """The model holds NaN/Inf weights: nothing is saved, `latest` keeps the last good one."""

    exit_code = EXIT_NON_FINITE_WEIGHTS
    label = "checkpoint not saved"
