"""The secrets chatplug has seen, and their masking in every text it produces.

A key read through ``chatplug.toolkit.env_secret`` (or given to ``register_secret``) is
registered here; the pipeline masks every registered secret in each error message, log line
and ``repr`` it produces, whichever backend raised it, so a plugin that echoes a 401 body does
not leak its key. Secrets shorter than ``MIN_LENGTH`` are not registered: they would mask
ordinary words. The password of any URL (``http://user:password@host``) is masked too, registered
or not: a base URL's userinfo reaches messages in the SDKs' own words.
"""

from __future__ import annotations

import re
import threading

MIN_LENGTH = 4
MASK = "***"

_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret containing another is masked whole
_lock = threading.Lock()

#: A URL's ``user:password@``: the password runs to the last ``@`` before the host's end.
#: Compiled on first use (a failure's text with a URL in it), not at ``import chatplug``.
_USERINFO = r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#@:]*):[^/\s?#]*@"


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every error and log line chatplug produces from now on."""
    global _ordered
    if not value or len(value) < MIN_LENGTH or value in _secrets:
        return
    with _lock:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret masked."""
    for value in _ordered:
        if value in text:
            text = text.replace(value, MASK)
    if "@" in text and "://" in text:
        text = re.sub(_USERINFO, rf"\g<head>:{MASK}@", text)  # re caches the compiled pattern
    return text
