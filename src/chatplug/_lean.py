"""Work an httpx client does on every request for nothing, skipped (public through
``chatplug.toolkit``). Both change only the client object they are given, never httpx, by making
it (or its cookies object) an instance of a subclass with the same layout, made once per class:
no wrapper holds the object, so no reference cycle is made.

``lean_cookies``: httpx 0.28 hands every response to its cookie jar: for each one it builds a
``urllib`` request (parsing the URL again, copying the headers) and an ``email`` message of the
headers, only to find no ``Set-Cookie`` in them. Against a loopback server that is 8-9% of an
ollama SDK call. httpx2, under the openai and anthropic SDKs, looks at the headers first;
``lean_cookies`` gives an httpx client the same check.

``lean_urls``: httpx parses the URL of every request from its text, and a path against the base
URL twice (``URL(path)``, then ``base_url.copy_with(raw_path=...)``), through a pure-Python parser
that checks each character: 40-60 us of a request's CPU, for the same few addresses each time.
``lean_urls`` keeps the URLs a client merged, so each address is parsed once.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeVar

C = TypeVar("C")

#: How many merged URLs a client keeps (its distinct request addresses: a backend has one or two).
#: Full, it starts again: a caller sending to ever new addresses costs a parse each, as before.
URLS_KEPT = 64


def lean_cookies(client: C) -> C:
    """``client`` (an ``httpx.Client`` or ``AsyncClient``; httpx2's have the check already) with
    its cookie jar consulted only for a response with a ``Set-Cookie`` or ``Set-Cookie2``
    header: the cookies kept and sent are the same (a custom jar's ``extract_cookies`` is called
    for those responses only). A jar set later (``client.cookies = ...``) goes without the
    check; an HTTP stack whose cookies work otherwise is left as it is. Returns ``client``."""
    cookies = getattr(client, "cookies", None)
    kind: type[Any] = type(cookies)
    if callable(getattr(kind, "extract_cookies", None)) and not _made(kind, "extract_cookies"):
        with contextlib.suppress(TypeError):  # a class that takes no subclass: left as it is
            cookies.__class__ = _subclass(kind, "extract_cookies", _lean_extract_cookies)
    return client


def lean_urls(client: C) -> C:
    """``client`` (an ``httpx.Client`` or ``AsyncClient``) with the URL of each request given
    as text (``client.post("/api/chat")``) parsed and merged with its base URL once, then kept:
    the same ``httpx.URL`` as before (immutable, so one object serves every request), without
    the parse. Setting ``client.base_url`` starts afresh; a URL given as an ``httpx.URL`` goes as
    it did. A client without httpx's ``_merge_url`` and ``_base_url`` is left as it is. Returns
    ``client``."""
    kind: type[Any] = type(client)
    usable = callable(getattr(kind, "_merge_url", None)) and "_base_url" in getattr(client, "__dict__", ())
    if usable and not _made(kind, "_merge_url"):
        with contextlib.suppress(TypeError):
            client.__class__ = _subclass(kind, "_merge_url", _lean_merge_url)
    return client


def _lean_extract_cookies(cls: type[Any]) -> Any:
    def extract_cookies(self: Any, response: Any) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            cls.extract_cookies(self, response)

    return extract_cookies


def _lean_merge_url(cls: type[Any]) -> Any:
    def _merge_url(self: Any, url: Any) -> Any:
        if url.__class__ is not str:
            return cls._merge_url(self, url)
        # Kept with the base URL they were merged with: a new base_url (an object httpx makes
        # anew on each assignment) finds none of them.
        base, merged = self.__dict__.get("_chatplug_urls") or (None, None)
        if merged is None or base is not self._base_url:
            base, merged = self._base_url, {}
            self.__dict__["_chatplug_urls"] = (base, merged)
        full = merged.get(url)
        if full is None:
            full = cls._merge_url(self, url)
            if len(merged) >= URLS_KEPT:
                merged.clear()
            merged[url] = full
        return full

    return _merge_url


def _made(cls: type[Any], name: str) -> bool:
    """Whether ``cls`` is a class ``_subclass`` made for ``name`` (once is enough): a mark per
    method, so that a class made lean for one is still made lean for the other."""
    return bool(cls.__dict__.get("lean")) and name in cls.__dict__


def _subclass(cls: type[Any], name: str, method: Any) -> type[Any]:
    """``cls`` with ``name`` replaced by ``method(cls)``: a subclass of the same layout, made
    once per class (``lean`` marks it, with ``name`` in its own namespace: see ``_made``)."""
    lean = _LEAN.get((cls, name))
    if lean is None:
        namespace = {"__slots__": (), "__module__": __name__, "lean": True, name: method(cls)}
        lean = _LEAN.setdefault((cls, name), type(f"Lean{cls.__name__}", (cls,), namespace))
    return lean


_LEAN: dict[tuple[type[Any], str], type[Any]] = {}
