"""What every layer does with the data a caller passes: read-only copies of it (``freeze``, and
``thaw`` back to plain JSON data), the checks that it can be sent (``check_json``, ``sendable``), and
a short ``shown`` form of it for error messages."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .exceptions import InvalidInputError

_SCALARS = (str, int, float, bool, type(None))


def freeze(value: Any) -> Any:
    """``value`` made read-only all the way down: dicts become read-only mappings, lists tuples."""
    if isinstance(value, _SCALARS):  # most of what a message holds: nothing to copy
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple([freeze(item) for item in value])
    return value


def thaw(value: Any) -> Any:
    """Plain JSON data (dicts and lists) again from what ``freeze`` made, for an SDK or a wire."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [thaw(item) for item in value]
    return value


def shown(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a 1 MB bad argument is not echoed whole; a value
    nested too deeply for ``repr`` is named, not shown."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep to print, or an int too long to
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def sendable(text: str, where: str) -> str:
    """``text`` if it can be sent: every provider's API takes UTF-8, which a lone surrogate
    (``"\\ud800"``, from bytes decoded with ``errors="surrogateescape"`` or a broken emoji) cannot be
    encoded in. ASCII text (the common case) is known to be so without encoding it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{where} holds a lone surrogate ({text[exc.start]!r} at position {exc.start}): that is not valid "
            "Unicode text and cannot be sent as UTF-8. Decode the text with errors='replace' (or remove it); "
            "nothing was sent."
        ) from None
    return text


#: How deep JSON data a caller passes may nest: deeper than any real schema or option (a
#: JSON schema passed as ollama's ``format`` included), and shallow enough that every recursive step
#: after validation (freezing and thawing, the SDKs' encoders) stays clear of Python's recursion
#: limit. ``json.dumps`` alone lets through values a few hundred levels short of it, which those
#: steps, taking more than one frame a level, do not survive.
MAX_DEPTH = 100


def too_deep(value: object) -> bool:
    """Whether ``value``'s containers nest more than ``MAX_DEPTH`` levels (a loop, not recursion)."""
    level: list[object] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, (Mapping, list, tuple))
            for child in (item.values() if isinstance(item, Mapping) else item)
        ]
        if not level:
            return False
    return any(isinstance(item, (Mapping, list, tuple)) for item in level)


def check_json(value: object, where: str) -> None:
    """``value`` must be JSON data that can be sent as UTF-8: every provider takes options and
    tool arguments as JSON, so what cannot be sent is caught before sending."""
    if too_deep(value):
        raise InvalidInputError(f"{where} is nested more than {MAX_DEPTH} levels deep; nothing was sent.")
    import json  # here: only calls with options or tools pay for it

    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidInputError(
            f"{where} must be JSON data (str, number, bool, None, list, dict), got {shown(value)}."
        ) from None
    sendable(text, where)
