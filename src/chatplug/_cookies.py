"""Cookies looked for only in a response that sets some (public through ``chatplug.toolkit``).

httpx 0.28 hands every response to its cookie jar: for each one it builds a ``urllib`` request
(parsing the URL again, copying the headers) and an ``email`` message of the headers, only to
find no ``Set-Cookie`` in them. Against a loopback server that is about a tenth of an ollama SDK
call. httpx2, under the openai and anthropic SDKs, looks at the headers first; ``lean_cookies``
gives an httpx client the same check, so its cookies are exactly what they were.
"""

from __future__ import annotations

from typing import Any, TypeVar

C = TypeVar("C")


def lean_cookies(client: C) -> C:
    """``client`` (an ``httpx.Client`` or ``AsyncClient``, or the httpx2 ones, which need it not)
    with its cookie jar consulted only for a response with a ``Set-Cookie`` or ``Set-Cookie2``
    header. A jar set later (``client.cookies = ...``) works as before, without the check.
    Returns ``client``."""
    cookies = client.cookies  # type: ignore[attr-defined]
    extract = cookies.extract_cookies
    if getattr(extract, "lean", False):
        return client

    def extract_cookies(response: Any) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            extract(response)

    extract_cookies.lean = True  # type: ignore[attr-defined]
    cookies.extract_cookies = extract_cookies  # this client's jar only: httpx itself is untouched
    return client
