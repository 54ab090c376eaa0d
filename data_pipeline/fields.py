"""The text field of a record: input.text_key as a key, a dotted path, or an Arrow column."""

from __future__ import annotations

from typing import Any

from data_pipeline.errors import ConfigError


class _Missing:
    """The type of MISSING; pickles as the module global (workers compare with `is`)."""

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()
"""Value of a text field that does not exist (JSONL key, dotted path inside a struct)."""


def lookup(obj: Any, key: str) -> Any:
    """obj[key]; else, for a dotted key, the nested value (`meta.text` -> obj["meta"]["text"]).

    MISSING when absent. An exact key wins over the dotted path.
    """
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    for part in key.split(".") if "." in key else [key]:
        if not isinstance(obj, dict) or part not in obj:
            return MISSING
        obj = obj[part]
    return obj


def text_column(schema: Any, key: str, where: str) -> tuple[str, str | None]:
    """(column, dotted path inside it or None) of input.text_key in an Arrow schema.

    ConfigError naming the key, the file and the columns when the column is missing or not text.
    """
    import pyarrow as pa

    names = list(schema.names)
    top, _, rest = key.partition(".")
    if key in names:
        column, rest, kind = key, "", schema.field(key).type
    elif rest and top in names and pa.types.is_struct(schema.field(top).type):
        return top, rest
    else:
        raise ConfigError(
            f"input.text_key={key!r}: {where} has no column {key!r} (columns: {names}). "
            "Set input.text_key to the column holding the text (a.b reads field b of struct a)."
        )
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary)
    if not any(is_type(kind) for is_type in (*text_types, pa.types.is_large_binary)):
        raise ConfigError(
            f"input.text_key={key!r}: column {column!r} of {where} has type {kind}, not text. "
            f"Set input.text_key to a string column (columns: {names})."
        )
    return column, None


def instruct_columns(inp: Any) -> list[str]:
    """The columns an instruction example is read from (input.format=chat|prompt_completion)."""
    if inp.format == "chat":
        return [inp.messages_key]
    return [inp.prompt_key, inp.completion_key]


def check_columns(schema: Any, inp: Any, where: str) -> None:
    """ConfigError when a parquet/HF schema lacks the text column (or the instruction columns)."""
    if not inp.is_instruct():
        text_column(schema, inp.text_key, where)
        return
    names = list(schema.names)
    for column in instruct_columns(inp):
        if column not in names:
            key = "messages_key" if inp.format == "chat" else "prompt_key/input.completion_key"
            raise ConfigError(
                f"input.{key}: {where} has no column {column!r} (columns: {names}). Set the key "
                "to the column holding it."
            )
