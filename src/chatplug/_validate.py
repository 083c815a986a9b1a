"""Checking what a caller passed, before anything is sent: the prompt or messages, and the
keyword options. Every problem is an ``InvalidInputError`` that says what to pass instead; the
caller's objects are read, never changed (the request copies them)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from ._config import _shown
from ._exceptions import InvalidInputError
from ._types import Message

ROLES = ("system", "user", "assistant")

# Keyword options that would override what chatplug itself decides, with what to do instead.
RESERVED = {
    "model": "use model_name= or a 'backend:model' prefix",
    "messages": "pass them as the first argument",
    "stream": "use stream_completion_sync() / stream_completion_async() to stream",
    "timeout": "set LLM_TIMEOUT or settings.timeout",
    "options": "pass provider options as keyword arguments, e.g. num_ctx=4096",
}

#: chatplug's own keyword names: an option a letter or two from one is a typo, not an option.
KEYWORDS = ("model_name", "temperature", "max_tokens", "backend")


def prompt_messages(prompt: object) -> tuple[Message, ...]:
    """``prompt`` as the one user message it stands for."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidInputError("prompt is empty: pass the text to send to the model.")
    return ({"role": "user", "content": prompt},)


def checked_messages(messages: object) -> tuple[Message, ...]:
    """``messages``, each checked (the request makes its own read-only copy)."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidInputError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    if not messages:
        raise InvalidInputError("messages is empty: pass at least one message.")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}."
            )
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise InvalidInputError(f"messages[{i}] has no {' or '.join(repr(k) for k in missing)}.")
        if len(message) > 2:
            extra = sorted(map(str, set(message) - {"role", "content"}))
            raise InvalidInputError(
                f"messages[{i}] has unsupported key(s) {', '.join(map(repr, extra))}: chatplug sends text "
                "messages with only 'role' and 'content'."
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InvalidInputError(f"messages[{i}] has role {_shown(role)}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise InvalidInputError(
                f"messages[{i}] content must be a string (text only), got {type(content).__name__}."
            )
    return tuple(messages)


def check_options(options: Mapping[str, Any]) -> None:
    """Options must be JSON data, and not one of chatplug's own names."""
    for key, value in options.items():
        if key in RESERVED:
            raise InvalidInputError(f"option {key!r} is chatplug's own: {RESERVED[key]}.")
        try:  # every provider takes options as JSON: catch what cannot be sent before sending
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise InvalidInputError(
                f"option {key!r} must be JSON data (str, number, bool, None, list, dict), got {_shown(value)}."
            ) from None
        typo = _near_keyword(key)
        if typo:
            raise InvalidInputError(
                f"option {key!r} looks like a misspelt {typo!r}: pass {typo}=..., or check the option's name."
            )


@functools.lru_cache(maxsize=256)
def _near_keyword(key: str) -> str | None:
    if key in KEYWORDS or len(key) < 5:
        return None
    import difflib  # only when options are given: it costs `import chatplug` ~2 ms

    close = difflib.get_close_matches(key, KEYWORDS, n=1, cutoff=0.8)
    return close[0] if close else None
