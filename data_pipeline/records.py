"""Turn raw records into document text, or into a skip reason (runs inside the workers)."""

from __future__ import annotations

import json
from typing import Any

from data_pipeline.fields import MISSING, lookup
from data_pipeline.readers import Unreadable

REASONS = (
    "invalid_utf8",
    "malformed_json",
    "missing_text",
    "non_string_text",
    "empty",
    "empty_file",
    "unreadable_file",
)
"""Skip reasons counted in manifest.json `skipped.counts`."""

REASON_TEXT = {
    "invalid_utf8": "the bytes are not valid UTF-8",
    "malformed_json": "the line is not a JSON object",
    "missing_text": "the text field (input.text_key) is missing or null",
    "non_string_text": "the text field (input.text_key) is not a string",
    "empty": "the document is empty or whitespace only",
    "empty_file": "the input file holds no record",
    "unreadable_file": "the file cannot be read from here on (truncated or corrupt)",
}


def _valid_str(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. JSON "\ud800"
        return False
    return True


def _from_value(value: Any, text_key: str) -> tuple[str | None, str | None]:
    if value is MISSING or value is None:
        return None, "missing_text"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if not isinstance(value, str):
        return None, "non_string_text"
    if not _valid_str(value):
        return None, "invalid_utf8"
    if not value.strip():
        return None, "empty"
    return value, None


def parse_record(kind: str, payload: Any, text_key: str) -> tuple[str | None, str | None]:
    """(text, None) for a good record, (None, reason) for a bad one.

    kind: jsonl (payload: a raw line), line (a raw text line), text (raw bytes of a whole file),
    value (a parquet/hf column value).
    """
    if isinstance(payload, Unreadable):
        return None, "unreadable_file"
    if kind == "jsonl":
        try:
            line = payload.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
        if not line.strip():
            return None, "empty"
        try:
            obj = json.loads(line)
        except ValueError:
            return None, "malformed_json"
        if not isinstance(obj, dict):
            return None, "malformed_json"
        return _from_value(lookup(obj, text_key), text_key)
    if kind == "line" and payload.endswith(b"\n"):
        payload = payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
    return _from_value(payload, text_key)
