"""Skip reasons of instruction records (added to data_pipeline.records.REASONS)."""

from __future__ import annotations

INSTRUCT_REASON_TEXT = {
    "missing_messages": "the messages field (input.messages_key) is missing or null",
    "malformed_messages": "the messages field is not a list of {role, content} objects",
    "unknown_role": "a turn's role is not system, user or assistant",
    "misplaced_system": "a system turn is not the first turn",
    "non_string_content": "a turn's content (or the prompt/completion) is not a string",
    "empty_assistant": "an assistant turn (or the completion) is empty or whitespace only",
    "no_assistant": "the example has no assistant turn (nothing to learn)",
    "missing_prompt": "the prompt field (input.prompt_key) is missing or null",
    "missing_completion": "the completion field (input.completion_key) is missing or null",
    "reserved_char": "the text holds U+E000/U+E001, reserved for the template's target markers",
    "render_error": "the chat template (input.template) fails on this example",
    "python_syntax": "the Python file does not parse (input.python_pairs)",
}
"""Reason -> what it means (in DataError messages and docs)."""

INSTRUCT_REASONS = tuple(INSTRUCT_REASON_TEXT)
