"""The error kinds of the data pipeline and their exit codes; each message says what to change."""

from __future__ import annotations

EXIT_DATA = 1
"""Exit code of a DataError (a bad input record with input.on_error=fail)."""
EXIT_CONFIG = 2
"""Exit code of a ConfigError or OutputError."""
EXIT_DISK_FULL = 74
"""Exit code of a DiskFullError (BSD EX_IOERR, as `python -m pretrain` for an unwritable
checkpoint): free space and rerun the same command to resume."""


class ConfigError(ValueError):
    """A setting is wrong; the message names the config key (e.g. `tokenizer.model=...`)."""


class DataError(RuntimeError):
    """A bad input record with `input.on_error=fail`; the message names file:line and the reason."""


class OutputError(RuntimeError):
    """The output directory cannot be used as is (e.g. it holds data of another tokenizer, or
    another job is writing it)."""


class DiskFullError(OutputError):
    """A write into the output directory failed for lack of space (ENOSPC) or quota (EDQUOT);
    the message names the file and the free space. Completed shards are kept."""


def exit_code(error: Exception) -> int:
    """The exit status of `python -m data_pipeline` for one of the errors above."""
    if isinstance(error, DiskFullError):
        return EXIT_DISK_FULL
    return EXIT_DATA if isinstance(error, DataError) else EXIT_CONFIG
