"""The three error kinds of the data pipeline; each message says what to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is wrong; the message names the config key (e.g. `tokenizer.model=...`)."""


class DataError(RuntimeError):
    """A bad input record with `input.on_error=fail`; the message names file:line and the reason."""


class OutputError(RuntimeError):
    """The output directory cannot be used as is (e.g. it holds data of another tokenizer)."""
