"""A hard deadline for every attempt: no attempt outlives its call's deadline, whatever the server
does. Sync HTTP clients are bounded where they block (public through ``chatplug.toolkit``); async
attempts are cancelled on their event loop (``loop_deadline``, at the end of this module).

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

The deadline is a ``contextvars.ContextVar`` (each thread has its own value, so concurrent calls
never mix): the dispatcher sets it to ``request.deadline`` around each sync ``complete()``, and a
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
import importlib
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

from ._transports import unbind

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
    caller's code between chunks runs outside it. Nothing is read until the iteration starts;
    past the first item, ``itertools.chain`` hands on the rest with no Python frame per item."""
    return itertools.chain.from_iterable(_first_within(iter(iterator), deadline))


def _first_within(items: Iterator[T], deadline: float | None) -> Iterator[Iterable[T]]:
    """``(first,)`` read inside the deadline's scope, then ``items`` itself (none if empty)."""
    with deadline_scope(deadline):
        try:
            first = next(items)
        except StopIteration:
            return
    yield (first,)
    yield items


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

    def __init__(self, core: Any) -> None:
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
    """A network backend whose connections are ``_Stream``s, and whose connects end at the deadline."""

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


class _Unbinding:
    """A reply's body, which the response holds instead of httpx's wrapper once closed.

    httpx's sync client wraps the body in a ``BoundSyncStream`` that refers back to the response.
    That is a cycle, which holds the request, the response and the connection's reply until the
    garbage collector runs: 46 objects a call on the ollama backend. Closed, the response keeps
    this stream instead (``_transports.unbind``), as on chatplug's async transport. Iterating
    hands on the inner stream's own iterator: no frame per chunk.
    """

    __slots__ = ("_inner", "_owner")

    def __init__(self, inner: Any, owner: Any) -> None:
        self._inner, self._owner = inner, owner

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        self._inner.close()
        unbind(self)


_UNBINDING: dict[str, type[_Unbinding] | None] = {}


def _unbinding(stack: str) -> type[_Unbinding] | None:
    """The ``_Unbinding`` class of HTTP stack ``stack`` (a subclass of its ``SyncByteStream``, which
    its client asserts), or ``None`` where the client's wrapper keeps no reference to the response
    (httpx2) or the transport is of no stack known (a custom one)."""
    if stack not in _UNBINDING:
        try:
            http = importlib.import_module(stack)
            wrapper = importlib.import_module(f"{stack}._client").BoundSyncStream
            cyclic = "response" in wrapper.__init__.__code__.co_varnames
            made = type("UnbindingStream", (_Unbinding, http.SyncByteStream), {"__slots__": ()}) if cyclic else None
        except (ImportError, AttributeError):
            made = None
        _UNBINDING[stack] = made
    return _UNBINDING[stack]


class DeadlineTransport:
    """An httpx (or httpx2) sync transport whose requests end at the calling thread's deadline.

    Wraps ``inner``, an ``HTTPTransport`` (direct or through a proxy): the sockets of its
    connection pool are bounded as the module says, and each request's wait for a pooled
    connection too. Another transport (a mock, a custom one) only gets the pool bound.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._unbinding = _unbinding(type(inner).__module__.partition(".")[0])
        pool = getattr(inner, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _Backend):
            core = importlib.import_module(type(backend).__module__.partition(".")[0])
            pool._network_backend = _Backend(backend, _Errors(core))  # type: ignore[union-attr]

    def handle_request(self, request: Any) -> Any:
        deadline = DEADLINE.get()
        if deadline is not None:
            timeouts = request.extensions.get("timeout")
            if timeouts is not None:
                pool = timeouts.get("pool")
                left = max(deadline - time.monotonic(), 0.0)
                if pool is None or left < pool:
                    request.extensions["timeout"] = {**timeouts, "pool": left}
        response = self.inner.handle_request(request)
        if self._unbinding is not None:
            response.stream = self._unbinding(response.stream, response)
        return response

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
    the client made it; its responses, once closed, are freed without the garbage collector
    (``_Unbinding``). Returns ``client``."""
    transport = getattr(client, "_transport", None)
    mounts = getattr(client, "_mounts", None)
    if transport is None or not isinstance(mounts, dict):
        raise TypeError(f"deadline_client takes an httpx or httpx2 sync Client, not a {type(client).__name__}")
    client._transport = deadline_transport(transport)  # type: ignore[attr-defined]
    for pattern, mounted in mounts.items():
        if mounted is not None:
            mounts[pattern] = deadline_transport(mounted)
    return client


# -- async: attempts whose deadlines end together share one timer -----------------------------

#: Deadlines this many seconds away or more are rounded up to the next ``_GRAIN`` seconds, so that
#: the attempts of a busy loop share one timer per grain (aiohttp's ``ceil_timeout`` rounds to whole
#: seconds from 5 s for the same reason): they end at most 0.1 s (2%) late. Nearer ones are exact,
#: and have a timer each, as with ``asyncio.timeout``.
_ROUNDED_FROM, _GRAIN = 5.0, 0.1
_ROUNDED_BELOW = 1e9  # seconds: a timeout of 1e308, which LLM_TIMEOUT takes, is left exact (no float overflow)


class _Timers:
    """The deadlines of one event loop's attempts, grouped by the time they end at: one
    ``TimerHandle`` per group. A group left empty keeps its timer for the attempts whose deadlines
    end at the same time (one after another, far ones rounded, they would otherwise make and
    cancel a timer each) until the next group is made, which cancels it; firing empty, it does
    nothing. Timers kept aside (``_TIMERS``) keep none: a timer holds its loop, and would keep it alive."""

    __slots__ = ("groups", "idle", "keep_idle")

    def __init__(self, keep_idle: bool) -> None:
        self.groups: dict[float, tuple[asyncio.TimerHandle, set[loop_deadline]]] = {}
        self.idle: list[float] = []  # the groups left empty, by when they end
        self.keep_idle = keep_idle

    def group(self, loop: asyncio.AbstractEventLoop, when: float) -> set[loop_deadline]:
        """The group of the deadlines that end at ``when``, made (with its timer) if need be."""
        found = self.groups.get(when)
        if found is not None:
            return found[1]
        for key in self.idle:
            idle = self.groups.get(key)
            if idle is not None and not idle[1]:
                del self.groups[key]
                idle[0].cancel()
        self.idle.clear()
        group: set[loop_deadline] = set()
        self.groups[when] = (loop.call_at(when, self.expire, when), group)
        return group

    def left(self, when: float) -> None:
        """The group ending at ``when`` is empty now."""
        if self.keep_idle:
            if not self.idle or self.idle[-1] != when:
                self.idle.append(when)
        else:
            handle, _ = self.groups.pop(when)
            handle.cancel()

    def expire(self, when: float) -> None:
        _, group = self.groups.pop(when)
        for bound in group:
            bound.expired = True
            bound.task.cancel()


_ATTRIBUTE = "_chatplug_deadline_timers"
#: The timers of loops that take no attributes (a loop class with ``__slots__``), which keep no
#: timer longer than its attempts: the dictionary's values would otherwise hold their loops.
_TIMERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Timers] = weakref.WeakKeyDictionary()


def _timers(loop: asyncio.AbstractEventLoop) -> _Timers:
    """The loop's timers: kept on the loop object itself where it takes attributes, so that they
    die with it (as the client cache keeps its clients)."""
    timers: _Timers | None = getattr(loop, _ATTRIBUTE, None)
    if timers is None:
        timers = _TIMERS.get(loop)
        if timers is None:
            try:
                timers = _Timers(keep_idle=True)
                setattr(loop, _ATTRIBUTE, timers)
            except AttributeError:
                timers = _TIMERS[loop] = _Timers(keep_idle=False)
    return timers


class loop_deadline:
    """``with loop_deadline(seconds):`` in a task cancels the task when ``seconds`` pass, and the
    block raises ``TimeoutError``: ``asyncio.timeout(seconds)`` as a plain ``with`` (the same
    bookkeeping of the task's cancellations: one from elsewhere stays a ``CancelledError``), its
    timer shared with the loop's other deadlines that end at the same time. Those 5 s away or
    more are rounded up to the tenth of a second (``_GRAIN``) so that they do."""

    __slots__ = ("_cancelling", "_group", "_loop", "_timers", "_when", "expired", "task")

    def __init__(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("loop_deadline must be used inside a task")
        self.task, self.expired = task, False
        when = loop.time() + seconds
        if _ROUNDED_FROM <= seconds < _ROUNDED_BELOW:
            when = math.ceil(when / _GRAIN) * _GRAIN
        self._loop, self._when = loop, when
        self._timers = _timers(loop)

    def __enter__(self) -> loop_deadline:
        self._cancelling = self.task.cancelling()  # type: ignore[attr-defined]  # 3.11+, as loop_deadline
        group = self._group = self._timers.group(self._loop, self._when)
        group.add(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        group = self._group
        group.discard(self)
        if not group and not self.expired:
            self._timers.left(self._when)
        if self.expired:  # the cancellation it made is taken back, however the block ended (as asyncio.timeout)
            cancelled = kind is not None and issubclass(kind, asyncio.CancelledError)
            if self.task.uncancel() <= self._cancelling and cancelled:  # type: ignore[attr-defined]
                raise TimeoutError from exc
