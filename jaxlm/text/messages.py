"""Chat messages ([{"role": ..., "content": ...}, ...]): the one check of their shape, for the
data readers (a record's `messages`) and the sampler (a chat prompt)."""

from __future__ import annotations

from typing import Any


def check_messages(messages: Any, field: str = "messages") -> None:
    """ValueError unless `messages` is a non-empty list of objects with string 'role' and 'content';
    `field` is the record's name for the list, in the message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"field {field!r} must be a non-empty list")
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{field}[{i}] must be an object with string 'role' and 'content'")
