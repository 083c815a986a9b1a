"""Provider settings read from the environment, the same way by every built-in backend.

Values are stripped of surrounding whitespace: a key mounted from a Kubernetes secret or
written with ``echo`` ends in a newline, which httpx refuses in a header, and its error quotes
the header (the key with it). What is still malformed after stripping is a ``ConfigError``
raised before any request, naming the variable; a secret's value is never shown.
"""

from __future__ import annotations

import os
from typing import TypeVar
from urllib.parse import urlsplit

from .._exceptions import ChatplugError, ConfigError

E = TypeVar("E", bound=ChatplugError)


def setting(name: str) -> str | None:
    """Environment variable ``name`` without surrounding whitespace; ``None`` if unset or empty."""
    return os.environ.get(name, "").strip() or None


def secret(name: str) -> str | None:
    """A key or token from ``name``; ``None`` if unset or empty."""
    raw = os.environ.get(name, "")
    if not raw:
        return None
    value = raw.strip()
    # Whitespace-only too: the SDK would read it raw. Non-ASCII (a pasted curly quote) cannot
    # go in a header either.
    if not value or _malformed(value) or not value.isascii():
        raise ConfigError(
            f"{name} contains whitespace, control or non-ASCII characters (its value is not shown): "
            "set it to the key alone."
        )
    return value


def base_url(name: str, example: str) -> str | None:
    """An http(s) URL from ``name``; ``None`` if unset or empty. A URL is no secret: a
    malformed one is shown in the error, with ``example`` of a good one."""
    value = setting(name)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or _malformed(value):
        raise ConfigError(f"{name}={value!r} is not valid: expected a URL like {example}.")
    return value


def redacted(error: E, *secrets: str | None) -> E:
    """``error`` with ``secrets`` masked in its message and in its args (``repr()`` shows those)."""
    error.message = redact(error.message, *secrets)
    error.args = (error.message,)
    return error


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with ``secrets`` masked: a key never reaches an error or a log line."""
    for value in secrets:
        if value and len(value) >= 4:  # shorter ones would mask ordinary words
            text = text.replace(value, "***")
    return text


def _malformed(value: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in value)
