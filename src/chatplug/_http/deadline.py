"""A hard deadline for every attempt: no attempt outlives its call's deadline, whatever the server
does. Sync HTTP clients are bounded where they block (public through ``chatplug.toolkit``); async
attempts are cancelled on their event loop (``timeout``, at the end of this module).

httpx's timeouts are per operation: a server that sends one byte every half second keeps a
``read=1`` request alive for as long as it likes, and so does one that drips its headers. An
async attempt is cancelled at its deadline; a sync one cannot be cancelled, so its
I/O is bounded where it blocks instead. ``deadline_client(client)`` wraps the transports of an
``httpx.Client`` or ``httpx2.Client`` (its default one and its proxy mounts, so the client's
limits, TLS, proxies and socket options all stay its own): every socket the client opens is
wrapped so that each connect, TLS handshake, read and write waits at most until the deadline of
the calling thread, and past it fails at once with the HTTP stack's own ``ConnectTimeout``,
``ReadTimeout`` or ``WriteTimeout``; the wait for a pooled connection is bounded too. The SDK on
top maps that timeout as it maps any other (chatplug: ``error_kind="timeout"``).

This reaches into private parts of the HTTP stack, each checked before use (``_core.internals``): the
client's ``_transport`` and ``_mounts``, an ``HTTPTransport``'s ``_pool`` and that pool's
``_network_backend`` (httpcore's). In a release that keeps them otherwise, the calls still work
and keep their per-operation timeouts; only the overall deadline (or the bound on each socket
operation) is lost, and a warning says so once.

The deadline is a ``contextvars.ContextVar`` (each thread has its own value, so concurrent calls
never mix): the pipeline sets it to ``request.deadline`` around each sync ``complete()``, and a
backend's sync ``stream()`` around the wait for its first chunk (``first_within``). Outside such a
scope a wrapped client behaves exactly as before. Cost: one ``ContextVar.get()`` and one
``time.monotonic()`` per socket operation, and a dict copy per request (~1 us a call in all).

A wrapped socket's operations are bounded, so no thread and no signal is needed. What this does
not bound: the system's DNS resolver (``getaddrinfo`` takes no timeout), and work done between
socket operations (parsing a reply, which is bounded by its size).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from types import ModuleType, TracebackType
from typing import Any, TypeVar

from .._core.internals import describe, lost, private_attribute

T = TypeVar("T")
A = TypeVar("A")

logger = logging.getLogger("chatplug")

#: When the current sync call must be over, on ``time.monotonic()``'s clock (``None``: no deadline).
DEADLINE: ContextVar[float | None] = ContextVar("chatplug_deadline", default=None)


class deadline_scope:
    """``with deadline_scope(request.deadline):`` bounds every request that a ``deadline_client``
    makes in this thread inside the block by ``deadline`` (``None``: no bound)."""

    __slots__ = ("_token", "deadline")

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __enter__(self) -> deadline_scope:
        self._token = DEADLINE.set(self.deadline)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        DEADLINE.reset(self._token)


def first_within(iterator: Iterable[T], deadline: float | None) -> Iterator[T]:
    """``iterator``'s items, the first one waited for inside ``deadline_scope(deadline)``: a sync
    stream's deadline bounds the wait for its first chunk (connecting, sending, the headers and
    the first piece of body); the rest is bounded per read by the client's own timeout (the
    request's ``timeout``), as an async stream's is. The scope never spans a ``yield``, so the
    caller's code between chunks runs outside it. Nothing is read until the iteration starts."""
    items = iter(iterator)
    with deadline_scope(deadline):
        try:
            first = next(items)
        except StopIteration:
            return
    yield first
    yield from items


class GaveUp(TimeoutError):
    """``call_within``'s wait ended at the deadline (apart from a ``TimeoutError`` of the function's own)."""


def call_within(function: Callable[[A], T], argument: A, seconds: float) -> T:
    """``function(argument)`` run in a daemon thread (in a copy of this thread's context), waited
    for at most ``seconds``; past them ``GaveUp``, and the thread finishes in the background, its
    result dropped (logged at debug level). The sync twin of cancelling an async attempt, for a
    backend whose sync methods do not end by the deadline themselves (``bounds_deadline``): a
    blocked thread cannot be stopped, only left. A daemon thread, not a pool's: a pool's threads
    are joined when Python exits, so a backend that never returns would hang the exit."""
    done = threading.Event()
    outcome: list[Any] = []  # [result] or [None, exception]

    def run() -> None:
        try:
            outcome.append(context.run(function, argument))
        except BaseException as exc:  # handed to the caller, re-raised there
            outcome.extend((None, exc))
        finally:
            done.set()
            if late:
                logger.debug("%s returned after its call's deadline; its result was dropped", function)

    context, late = contextvars.copy_context(), False
    threading.Thread(target=run, name="chatplug-attempt", daemon=True).start()
    if not done.wait(min(max(seconds, 0.0), threading.TIMEOUT_MAX)):
        late = True
        raise GaveUp(f"no answer within {seconds:g} s")
    if len(outcome) == 2:
        raise outcome[1]
    return outcome[0]  # type: ignore[no-any-return]


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to the time left before the thread's deadline; ``expired`` raised when none is."""
    deadline = DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the call's deadline passed")
    return left if timeout is None or left < timeout else timeout


class _Errors:
    """The timeout exceptions of one HTTP core library (``httpcore`` or ``httpcore2``)."""

    __slots__ = ("connect", "read", "write")

    def __init__(self, core: ModuleType) -> None:
        self.connect: type[Exception] = core.ConnectTimeout
        self.read: type[Exception] = core.ReadTimeout
        self.write: type[Exception] = core.WriteTimeout


class _Stream:
    """A network stream whose every wait ends at the thread's deadline."""

    __slots__ = ("_errors", "_inner")

    def __init__(self, inner: Any, errors: _Errors) -> None:
        self._inner, self._errors = inner, errors

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, self._errors.read))  # type: ignore[no-any-return]

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, self._errors.write))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> _Stream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, self._errors.connect))
        return _Stream(inner, self._errors)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    """A network backend whose connections are ``_Stream``s, and whose connects end at the deadline.
    (httpcore's ``NetworkBackend`` and ``NetworkStream`` are public interfaces: these implement them.)"""

    __slots__ = ("_errors", "_inner")

    def __init__(self, inner: Any, errors: _Errors) -> None:
        self._inner, self._errors = inner, errors

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _Stream:
        timeout = _left(timeout, self._errors.connect)
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self._errors)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> _Stream:
        timeout = _left(timeout, self._errors.connect)
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options), self._errors)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


#: What is lost, and said once (``_core.internals.lost``), when httpx's or httpcore's private parts are
#: not as ``deadline_client`` and ``DeadlineTransport`` expect them.
_WHOLE = "the overall deadline of sync calls (each connect, read and write keeps its own timeout)"
_SOCKETS = "the deadline on each socket operation of sync calls (the wait for a pooled connection stays bounded)"


def _stack(thing: object, name: str) -> ModuleType | None:
    """The HTTP stack, ``httpx`` or ``httpx2``, whose class ``name`` (``"Client"``, ``"HTTPTransport"``)
    ``thing`` is an instance of; ``None`` if neither's. A stack that made an object is imported."""
    for stack in ("httpx", "httpx2"):
        http = sys.modules.get(stack)
        if http is not None and isinstance(thing, getattr(http, name)):
            return http
    return None


def _bound_sockets(transport: Any) -> None:
    """Wrap the network backend of ``transport``'s (an ``HTTPTransport``'s) connection pool in a
    ``_Backend``, so that every socket it opens is bounded by the thread's deadline. Both are
    private (``HTTPTransport._pool``, httpcore's ``ConnectionPool._network_backend``): either
    missing, or of another kind, the sockets go unbounded, said once."""
    pool: Any = private_attribute(transport, "_pool", object, what=_SOCKETS)
    if pool is None:
        return
    core = sys.modules.get(type(pool).__module__.partition(".")[0])  # httpcore (httpx), httpcore2 (httpx2)
    pools: Any = getattr(core, "ConnectionPool", ())
    if core is None or not isinstance(pool, pools):
        lost(_SOCKETS, f"{describe(transport)}._pool is a {describe(pool)}, not an httpcore ConnectionPool")
        return
    if isinstance(getattr(pool, "_network_backend", None), _Backend):
        return  # wrapped already
    backend = private_attribute(pool, "_network_backend", core.NetworkBackend, what=_SOCKETS)
    if backend is not None:
        pool._network_backend = _Backend(backend, _Errors(core))


class DeadlineTransport:
    """An httpx (or httpx2) sync transport whose requests end at the calling thread's deadline.

    Wraps ``inner``, an ``HTTPTransport`` (direct or through a proxy): the sockets of its
    connection pool are bounded as the module says (``_bound_sockets``), and each request's wait
    for a pooled connection too. Another transport (a mock, a custom one) only gets the pool bound.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        if _stack(inner, "HTTPTransport") is not None:
            _bound_sockets(inner)

    def handle_request(self, request: Any) -> Any:
        deadline = DEADLINE.get()
        if deadline is not None:
            timeouts = request.extensions.get("timeout")
            if timeouts is not None:
                pool = timeouts.get("pool")
                left = max(deadline - time.monotonic(), 0.0)
                if pool is None or left < pool:
                    request.extensions["timeout"] = {**timeouts, "pool": left}
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> DeadlineTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.inner.__exit__(kind, exc, tb)


def deadline_transport(inner: T) -> T:
    """``inner`` (an ``httpx.HTTPTransport`` or ``httpx2.HTTPTransport``) bounded by the calling
    thread's deadline: pass it as ``httpx.Client(transport=...)``. ``deadline_client`` is the
    simpler way when the client makes its own transports."""
    return inner if isinstance(inner, DeadlineTransport) else DeadlineTransport(inner)  # type: ignore[return-value]


def deadline_client(client: T) -> T:
    """``client`` (an ``httpx.Client`` or ``httpx2.Client``, e.g. an SDK's ``DefaultHttpxClient``),
    its transports (the default one and each proxy's) wrapped in place by ``deadline_transport``:
    everything else about it (limits, TLS, proxies from the environment, socket options) stays as
    the client made it. Returns ``client``; ``TypeError`` for anything else.

    The client keeps its transports in private attributes (``_transport``, ``_mounts``): in a
    release of the HTTP stack that keeps them otherwise, ``client`` is returned as it is, its calls
    bounded per operation by its timeout but not by the call's deadline, and a warning says so once."""
    http = _stack(client, "Client")
    if http is None:
        raise TypeError(f"deadline_client takes an httpx or httpx2 sync Client, not a {type(client).__name__}")
    transport = private_attribute(client, "_transport", http.BaseTransport, what=_WHOLE)
    mounts = private_attribute(client, "_mounts", dict, what=_WHOLE)
    if transport is None or mounts is None:
        return client
    client._transport = deadline_transport(transport)  # type: ignore[attr-defined]
    for pattern, mounted in mounts.items():
        if mounted is not None:
            mounts[pattern] = deadline_transport(mounted)
    return client


# -- async: an attempt's deadline on the event loop --------------------------------------------
#
# An async attempt is bounded as ``asyncio.timeout`` bounds a block: a timer cancels the task at the
# deadline, and the block raises the built-in ``TimeoutError``. Python 3.10 has no
# ``asyncio.timeout``; ``_Timeout`` is its equivalent there (and its ``asyncio.TimeoutError`` is
# not yet the built-in one: ``TIMEOUTS`` catches both). Not ``asyncio.wait_for``: on 3.10 it runs
# the awaitable in a task of its own, so a stream's first chunk would be read in another context
# than the rest (a contextvar its backend set before that chunk could not be reset after it).

if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:

    class _Timeout:
        """``asyncio.timeout(seconds)`` for Python 3.10: ``async with _Timeout(seconds):`` in a task
        cancels the task when ``seconds`` pass, and the block then raises the built-in
        ``TimeoutError``; a cancellation from elsewhere stays a ``CancelledError``. What it cannot
        do without 3.11's ``Task.cancelling()``: tell its own cancellation from one that comes from
        elsewhere in the same turn of the loop as the deadline; that one is taken for the deadline."""

        __slots__ = ("_expired", "_handle", "_seconds", "_task")

        def __init__(self, seconds: float) -> None:
            self._seconds, self._expired = seconds, False
            self._handle: asyncio.TimerHandle | None = None

        async def __aenter__(self) -> _Timeout:
            task = asyncio.current_task()
            if task is None:
                raise RuntimeError("Timeout should be used inside a task")
            self._task = task
            self._handle = asyncio.get_running_loop().call_later(self._seconds, self._expire)
            return self

        def _expire(self) -> None:
            self._expired = True
            self._task.cancel()

        async def __aexit__(
            self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
        ) -> None:
            if self._handle is not None:
                self._handle.cancel()
            if self._expired and kind is not None and issubclass(kind, asyncio.CancelledError):
                raise TimeoutError from exc

    timeout = _Timeout

#: What a block under ``timeout`` raises at its deadline, and what an attempt's own timeout may be:
#: before Python 3.11 ``asyncio.TimeoutError`` (``asyncio.wait_for``'s, aiohttp's) is not the built-in.
TIMEOUTS: tuple[type[Exception], ...] = (TimeoutError, asyncio.TimeoutError)
