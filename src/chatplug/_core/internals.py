"""Where chatplug reaches into a dependency's private parts, and its way out when they change.

Each use of a private attribute or an internal behaviour of another library (httpx, httpcore,
the ollama SDK ...) goes through a helper of its own that checks the attribute is there and
has the shape it expects, and otherwise falls back to the public path: the call still succeeds,
only the speed-up or the extra bound is lost, and ``lost`` logs one warning saying which and why.
A test deletes or renames each such attribute and shows the call still succeeds
(``tests/test_internals.py``). The uses (each new one goes here too), and what is lost without each:

- the ollama SDK's ``Client._client`` (its httpx client; ``backends/ollama.py``): the overall
  deadline of sync ollama calls;
- its ``ollama._types.ChatRequest`` and ``Client._request`` (``backends/ollama.py``): each tool's
  JSON Schema sent whole;
- httpx's ``Client._cookies`` (``lean_cookies``, here): a reply's cookies looked for only when it
  sets one (``tests/benchmarks/bench_kept.py``, inside sync ollama calls to the loopback fake
  server, the two ways alternating: 7.9-9.6% of a call, ~110-180 us);
- httpx's and httpx2's ``Client._transport`` and ``_mounts`` (``deadline_client``,
  ``_http/deadline.py``): the overall deadline of sync calls;
- ``HTTPTransport._pool`` and httpcore's ``ConnectionPool._network_backend``
  (``DeadlineTransport``, ``_http/deadline.py``): the deadline on each socket operation (the wait
  for a pooled connection stays bounded);
- ``httpx._utils.get_environment_proxies`` (``_http/transports.py``): the stack's own reading of
  the proxy variables; chatplug's reading of them by httpx 0.28's rules takes its place;
- the back reference of httpx's ``BoundAsyncStream`` to its response (``unbind``,
  ``_http/transports.py``): responses freed without the garbage collector;
- an SDK's ``DefaultAsyncHttpxClient`` being an ``AsyncClient`` of httpx2 or httpx
  (``backends/_stainless.py``): chatplug's aiohttp transport on the SDK's async calls;
- the anthropic SDK's messages-module tables ``DEPRECATED_MODELS``,
  ``MODELS_TO_WARN_WITH_THINKING_ENABLED`` and ``messages_create_request_attributes``
  (``backends/anthropic.py``): ``create()``'s model warnings and OpenTelemetry span on chatplug's
  calls;
- ``os.environ``'s private ``_data`` dict (``settings.env``, ``settings._texts``): the variables a
  call reads, read without raising and catching a ``KeyError`` for each unset one
  (``tests/benchmarks/bench_kept.py``, inside sync ollama calls to the loopback fake server:
  2.5-4.3% of a call, ~25-75 us); else the public
  mapping;
- an event loop's ``close``, wrapped on the loop object itself (``_http/clients.py``): a loop
  closed by hand, without ``shutdown_asyncgens()``, closes chatplug's clients first; a loop that
  takes no attribute has its clients dropped at the next sweep instead (no warning: not a
  release's change).

The HTTP stacks' exceptions are mapped by their class names (``_http/errors.py``,
``_http/transports.py``), which are public: a class a release renames maps by the names of its
bases, as a connection error.

The request options ``create()`` passes to the SDK's ``post()`` and chatplug passes too (openai's
``security``, anthropic's ``span_*``) are checked by ``tests/test_sdk_parity.py``, which compares
what ``create()`` and chatplug send. chatplug assigns ``__class__`` of no object it does not own;
the one method it replaces on such an object is an event loop's ``close``, on that loop alone.
"""

from __future__ import annotations

import functools
import logging
import threading
from types import ModuleType
from typing import Any, TypeVar

logger = logging.getLogger("chatplug")

T = TypeVar("T")
C = TypeVar("C")

_said: set[str] = set()
_lock = threading.Lock()
_MISSING = object()


def lost(what: str, why: str) -> None:
    """Log, once per process for each ``what``, that a dependency's internals have changed:
    ``what`` (a feature: "the overall deadline of sync calls on httpx") is off because ``why``
    ("httpx.Client has no _transport"). Later calls fall back silently."""
    with _lock:
        if what in _said:
            return
        _said.add(what)
    logger.warning(
        "chatplug: %s is off: %s. Calls still work; upgrade chatplug, or report this if it persists.", what, why
    )


def forget() -> None:
    """Warn again about everything (for tests)."""
    with _lock:
        _said.clear()


def private_attribute(owner: object, name: str, kind: type[T], *, what: str) -> T | None:
    """``owner.<name>``, a dependency's private attribute, if it is there and a ``kind``;
    otherwise ``None``, and ``lost(what, ...)`` says which it was (missing, or what instead)."""
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        lost(what, f"{describe(owner)} has no {name}")
    elif isinstance(value, kind):
        return value
    else:
        lost(what, f"{describe(owner)}.{name} is a {describe(type(value))}, not a {describe(kind)}")
    return None


def describe(thing: object) -> str:
    """``thing``'s name, for a warning: ``httpx.Client`` for the class or one of its objects,
    ``httpx._utils`` for a module."""
    if isinstance(thing, ModuleType):
        return thing.__name__
    kind = thing if isinstance(thing, type) else type(thing)
    module = kind.__module__.partition(".")[0]  # the package its users know, not a private module
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


LEAN_COOKIES = "reading a reply's cookies only when it sets one"


def lean_cookies(client: C) -> C:
    """``client``, an ``httpx.Client`` or ``AsyncClient``, with its cookie jar consulted only for a
    reply that sets a cookie (a ``Set-Cookie`` or ``Set-Cookie2`` header), as httpx2 does. httpx
    0.28 hands every reply to the jar, which builds a ``urllib`` request and an ``email`` message
    of the headers only to find no cookie: 7.9-9.6% of a sync ollama call to the loopback fake
    server, ~110-180 us (``tests/benchmarks/bench_kept.py``: inside real calls, the two ways
    alternating; medians of five runs on 2 shared cores). The cookies kept
    and sent are the same. The client's cookies object (its private ``_cookies``)
    is replaced by one of chatplug's own ``httpx.Cookies`` subclass over the same jar; if it is
    missing or not an ``httpx.Cookies``, the client is left as it is (said once). httpx2's
    clients and other objects are returned as they are. Returns ``client``."""
    import httpx

    if not isinstance(client, httpx.Client | httpx.AsyncClient):
        return client
    cookies = private_attribute(client, "_cookies", httpx.Cookies, what=LEAN_COOKIES)
    if cookies is None or isinstance(cookies, _set_cookies_only()):
        return client
    client._cookies = _set_cookies_only()(cookies.jar)
    return client


@functools.cache
def _set_cookies_only() -> type[Any]:
    """chatplug's ``httpx.Cookies`` that reads a reply's cookies only when it sets one (made on
    first use: httpx is imported by the backends that need it, not by ``import chatplug``)."""
    import httpx

    class SetCookiesOnly(httpx.Cookies):
        def extract_cookies(self, response: httpx.Response) -> None:
            headers = response.headers
            if "set-cookie" in headers or "set-cookie2" in headers:
                super().extract_cookies(response)

    return SetCookiesOnly
