"""Cookies looked for only in a response that sets some (public through ``chatplug.toolkit``).

httpx 0.28 hands every response to its cookie jar: for each one it builds a ``urllib`` request
(parsing the URL again, copying the headers) and an ``email`` message of the headers, only to
find no ``Set-Cookie`` in them. Against a loopback server that is 8-9% of an ollama SDK
call. httpx2, under the openai and anthropic SDKs, looks at the headers first; ``lean_cookies``
gives an httpx client the same check.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

C = TypeVar("C")


def lean_cookies(client: C) -> C:
    """``client`` (an ``httpx.Client`` or ``AsyncClient``; httpx2's have the check already) with
    its cookie jar consulted only for a response with a ``Set-Cookie`` or ``Set-Cookie2``
    header: the cookies kept and sent are the same (a custom jar's ``extract_cookies`` is called
    for those responses only). A jar set later (``client.cookies = ...``) goes without the
    check; an HTTP stack whose cookies work otherwise is left as it is. Returns ``client``."""
    cookies = getattr(client, "cookies", None)
    kind: type[Any] = type(cookies)
    if callable(getattr(kind, "extract_cookies", None)) and not getattr(kind, "lean", False):
        # The client's own cookies object becomes an instance of a subclass: httpx itself is
        # untouched, and no wrapper holds the object (which would make a reference cycle).
        with contextlib.suppress(TypeError):  # a class that takes no subclass: left as it is
            cookies.__class__ = _lean(kind)
    return client


def _lean(cls: type[Any]) -> type[Any]:
    """``cls`` with the check: a subclass of the same layout, made once per class."""
    lean = _LEAN.get(cls)
    if lean is None:

        def extract_cookies(self: Any, response: Any) -> None:
            headers = response.headers
            if "set-cookie" in headers or "set-cookie2" in headers:
                cls.extract_cookies(self, response)

        namespace = {"__slots__": (), "__module__": __name__, "lean": True, "extract_cookies": extract_cookies}
        lean = _LEAN.setdefault(cls, type(f"Lean{cls.__name__}", (cls,), namespace))
    return lean


_LEAN: dict[type[Any], type[Any]] = {}
