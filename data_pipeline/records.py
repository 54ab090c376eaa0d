"""Turn raw records into document text, or into a skip reason (runs inside the workers)."""

from __future__ import annotations

import json
import re
from typing import Any

from data_pipeline.fields import MISSING, lookup
from data_pipeline.instruct.reasons import INSTRUCT_REASON_TEXT, INSTRUCT_REASONS
from data_pipeline.readers import Unreadable

MAX_JSON_DEPTH = 256
"""Deepest nesting of arrays/objects a JSONL line may have; deeper lines are skipped as
`too_deep`. Python's json parser recurses per level and raises RecursionError at a depth that
depends on the caller's stack (so on workers=1 vs a pool worker); a fixed limit far below it
keeps the result the same everywhere and one hostile line (`[[[[...`) from ending the job."""

REASONS = (
    "invalid_utf8",
    "malformed_json",
    "too_deep",
    "missing_text",
    "non_string_text",
    "empty",
    "empty_file",
    "unreadable_file",
    *INSTRUCT_REASONS,
)
"""Skip reasons counted in manifest.json `skipped.counts`."""

REASON_TEXT = {
    "invalid_utf8": "the bytes are not valid UTF-8",
    "malformed_json": "the line is not a JSON object",
    "too_deep": f"the line nests JSON arrays/objects more than {MAX_JSON_DEPTH} levels deep",
    "missing_text": "the text field (input.text_key) is missing or null",
    "non_string_text": "the text field (input.text_key) is not a string",
    "empty": "the document is empty or whitespace only",
    "empty_file": "the input file holds no record",
    "unreadable_file": "the file cannot be read from here on (truncated or corrupt)",
    **INSTRUCT_REASON_TEXT,
}


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = re.compile(rb"[][{}]")


def _too_deep(line: bytes) -> bool:
    """Whether the JSON in `line` nests deeper than MAX_JSON_DEPTH (brackets inside strings do
    not count). Cheap: lines with fewer opening brackets than the limit are not scanned."""
    if line.count(b"[") + line.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", line)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def parse_json_line(payload: bytes) -> tuple[Any, str | None]:
    """(object, None) for a JSONL line holding one JSON object, else (None, skip reason)."""
    try:
        line = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if not line.strip():
        return None, "empty"
    return _parse_json(line, payload)


def _parse_json(line: str, raw: bytes) -> tuple[Any, str | None]:
    """(object, None), or (None, reason) for a line that is not one JSON object."""
    if _too_deep(raw):
        return None, "too_deep"
    try:
        obj = json.loads(line)
    except RecursionError:  # not expected below MAX_JSON_DEPTH; never let it end the job
        return None, "too_deep"
    except ValueError:  # also integers of over 4300 digits (sys.get_int_max_str_digits)
        return None, "malformed_json"
    if not isinstance(obj, dict):
        return None, "malformed_json"
    return obj, None


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
        obj, reason = parse_json_line(payload)
        if reason is not None:
            return None, reason
        return _from_value(lookup(obj, text_key), text_key)
    if kind == "line" and payload.endswith(b"\n"):
        payload = payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
    return _from_value(payload, text_key)
