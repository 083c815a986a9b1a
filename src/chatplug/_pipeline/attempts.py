"""The one attempt loop, as a sync and an async twin side by side, for whole and streamed calls.

Each attempt: the backend of the plan's target (made on its first use), the request built for it,
the cache asked (first attempt only: a hit ends the call, nothing sent), the rate limit asked, the
observers told, then the backend called. A failure is classified (``Call.failed``) and the plan
decides: wait and retry, move to a fallback target, or stop with the call's error, all within the
call's deadline. What an attempt *does* is the caller's ``attempt`` function: ``complete_sync`` /
``complete_async`` here for a whole reply, ``stream.open_sync`` / ``open_async`` for a stream (which
may be retried until its first text reaches the caller).

``call_sync`` and ``call_async`` are whole calls; ``stream`` builds streamed ones on the same parts.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar, cast

from .._http.deadline import DEADLINE, TIMEOUTS, GaveUp, call_within, timeout
from .._plugins import plugins
from .arguments import CallArguments
from .call import Call, late, where
from .response import as_chatplug_error, failed, succeeded

if TYPE_CHECKING:
    from .._core.backend import ChatBackend
    from .._core.chunks import ChatChunk
    from .._core.values import ChatRequest, ChatResult, LLMResponse
    from .._plugins.manager import Plugins

T = TypeVar("T")

#: What an attempt does with its backend, its request and the seconds left before the deadline.
Attempt = Callable[["ChatBackend", "ChatRequest", float], T]
AsyncAttempt = Callable[["ChatBackend", "ChatRequest", float], Awaitable[T]]


# -- the loop -------------------------------------------------------------------------------------


def attempts_sync(manager: Plugins, call: Call, attempt: Attempt[T]) -> T | None:
    """``attempt``'s value from the first attempt that succeeds; ``None`` when the cache answers
    (``call.hit``); the call's error raised when the plan gives up."""
    while True:
        chosen = target_sync(manager, call)
        request = call.build_request(chosen)
        if lookup_sync(call, chosen, request):
            return None
        limit_sync(call, request)
        manager.on_request(request)
        call.plan.attempts += 1
        try:
            value = attempt(chosen, request, call.plan.remaining())
        except Exception as exc:
            wait = call.failed(exc, manager)
        else:
            call.plan.succeeded()
            return value
        time.sleep(wait)  # a backoff or a Retry-After, within the deadline (0: a fallback)


async def attempts_async(manager: Plugins, call: Call, attempt: AsyncAttempt[T]) -> T | None:
    """The async twin of ``attempts_sync``."""
    while True:
        chosen = await target_async(manager, call)
        request = call.build_request(chosen)
        if await lookup_async(call, chosen, request):
            return None
        await limit_async(call, request)
        manager.on_request(request)
        call.plan.attempts += 1
        try:
            value = await attempt(chosen, request, call.plan.remaining())
        except Exception as exc:
            wait = call.failed(exc, manager)
        else:
            call.plan.succeeded()
            return value
        await asyncio.sleep(wait)


# -- a call's beginning and end -----------------------------------------------------------------


def begin_sync(manager: Plugins, arguments: CallArguments) -> Call:
    """The call checked (the plugins loaded on the first call)."""
    manager.load()
    return Call(manager, arguments)


async def begin_async(manager: Plugins, arguments: CallArguments) -> Call:
    """``begin_sync`` without blocking the loop: the first call reads entry points and imports
    plugins in a worker thread."""
    if not manager.loaded:
        await asyncio.to_thread(manager.load)
    return Call(manager, arguments)


def target_sync(manager: Plugins, call: Call) -> ChatBackend:
    """The backend of the plan's current target, made on its first use."""
    backends, name = manager.backends, call.plan.target.backend
    chosen = backends.made(name)
    if chosen is None:
        chosen = backends.get(name)
        call.plan.restart()  # making the backend (importing its SDK) is not the server's time
    return chosen


async def target_async(manager: Plugins, call: Call) -> ChatBackend:
    """``target_sync`` without blocking the loop: a backend's first use imports its SDK (~0.4 s)
    and may build clients, so it is made in a worker thread."""
    backends, name = manager.backends, call.plan.target.backend
    chosen = backends.made(name)
    if chosen is None:
        chosen = await asyncio.to_thread(backends.get, name)
        call.plan.restart()
    return chosen


def failure(manager: Plugins, call: Call | None, error: Exception, start: float, model_name: object) -> LLMResponse:
    """The response of a call that failed with ``error``."""
    request = call.request if call is not None else None
    return failed(as_chatplug_error(error, where(manager, request)), request, start, model_name)


def success(manager: Plugins, call: Call, result: object, start: float) -> LLMResponse:
    """The response of a call whose last attempt returned ``result`` (or that the cache answered
    with it). ``result`` is a plugin's: ``succeeded`` makes one that is no ``ChatResult`` the
    plugin's failure."""
    assert call.request is not None
    return succeeded(cast("ChatResult", result), call.request, start, manager.backends.describe)


def end_sync(manager: Plugins, call: Call | None, response: LLMResponse) -> LLMResponse:
    """What follows every call, whole or streamed: the response told its attempts, a success
    stored in the cache and its real tokens counted in the rate limit, the observers told."""
    if call is not None:
        call.finish(response)
        call.after(response)
    manager.on_response(call.request if call is not None else None, response)
    return response


async def end_async(
    manager: Plugins, call: Call | None, response: LLMResponse, *, cancelled: bool = False
) -> LLMResponse:
    """The async twin of ``end_sync``; a cancelled task awaits nothing more (no cache, no rate limit)."""
    if call is not None:
        call.finish(response)
        if not cancelled:
            await call.aafter(response)
    manager.on_response(call.request if call is not None else None, response)
    return response


# -- whole calls ------------------------------------------------------------------------------------


def call_sync(arguments: CallArguments) -> LLMResponse:
    """A whole call: attempts until one succeeds or the plan gives up."""
    start = time.perf_counter()
    manager = plugins()
    call: Call | None = None
    try:
        call = begin_sync(manager, arguments)
        result = attempts_sync(manager, call, complete_sync)
    except Exception as exc:
        response = failure(manager, call, exc, start, arguments.model_name)
    else:
        response = success(manager, call, result if call.hit is None else call.hit, start)
    return end_sync(manager, call, response)


async def call_async(arguments: CallArguments) -> LLMResponse:
    """The async twin of ``call_sync``."""
    start = time.perf_counter()
    manager = plugins()
    call: Call | None = None
    try:
        call = await begin_async(manager, arguments)
        result = await attempts_async(manager, call, complete_async)
    except Exception as exc:
        response = failure(manager, call, exc, start, arguments.model_name)
    else:
        response = success(manager, call, result if call.hit is None else call.hit, start)
    return await end_async(manager, call, response)


def complete_sync(chosen: ChatBackend, request: ChatRequest, seconds: float) -> ChatResult:
    """A whole attempt: ``chosen.complete(request)`` within ``seconds``. The deadline is set for
    the HTTP clients of ``toolkit.deadline_client`` (a contextvar: each thread has its own), whose
    sockets give up when it passes; a backend that does not bound its own sync calls
    (``bounds_deadline``) runs in a worker thread that is given up at the deadline."""
    token = DEADLINE.set(request.deadline)
    try:
        if chosen.bounds_deadline:
            return chosen.complete(request)
        try:
            return call_within(chosen.complete, request, seconds)
        except GaveUp:
            raise late(request) from None
    finally:
        DEADLINE.reset(token)


async def complete_async(chosen: ChatBackend, request: ChatRequest, seconds: float) -> ChatResult:
    """A whole async attempt: ``chosen.acomplete(request)``, cancelled at the deadline."""
    return await within(chosen.acomplete(request), seconds, request)


# -- the cache, the rate limit and the deadline of one attempt ------------------------------------


def lookup_sync(call: Call, chosen: ChatBackend, request: ChatRequest) -> bool:
    """Whether the cache answers the call (its first attempt only); the reply is ``call.hit``."""
    key = call.cache_key_for(chosen, request)
    if key is not None:
        assert call.cache is not None
        call.hit = call.cache.get(key)
    return call.hit is not None


async def lookup_async(call: Call, chosen: ChatBackend, request: ChatRequest) -> bool:
    key = call.cache_key_for(chosen, request)
    if key is not None:
        assert call.cache is not None
        call.hit = await call.cache.aget(key)
    return call.hit is not None


def limit_sync(call: Call, request: ChatRequest) -> None:
    """Wait for the attempt's place in its backend's rate limit, if it has one."""
    limits = call.limits(request)
    if limits is None:
        return
    from . import ratelimit

    wait, call.ticket = ratelimit.limiter().acquire(request.backend, *limits, call.plan.remaining())
    if call.ticket is None:
        raise ratelimit.too_long(request.backend, wait)
    if wait > 0:
        ratelimit.sleep(wait)


async def limit_async(call: Call, request: ChatRequest) -> None:
    limits = call.limits(request)
    if limits is None:
        return
    from . import ratelimit

    wait, call.ticket = await ratelimit.limiter().aacquire(request.backend, *limits, call.plan.remaining())
    if call.ticket is None:
        raise ratelimit.too_long(request.backend, wait)
    if wait > 0:
        await ratelimit.asleep(wait)


async def within(awaitable: Awaitable[T], seconds: float, request: ChatRequest) -> T:
    """``awaitable``, cancelled when ``seconds`` pass: the hard deadline of an async attempt. Awaited
    in the caller's task (``asyncio.timeout``, or its equivalent on Python 3.10), so a stream's
    first chunk is read in the same context as the rest. A ``TimeoutError`` of the attempt's own
    (``asyncio.TimeoutError`` before 3.11) is a timeout too, as the deadline's."""
    try:
        async with timeout(seconds):
            return await awaitable
    except TIMEOUTS:
        raise late(request) from None


def stream_within(chosen: ChatBackend, request: ChatRequest, seconds: float) -> Iterable[ChatChunk]:
    """``chosen.stream(request)`` within the call's deadline: for a backend that does not bound its
    own sync calls, the stream's opening and first chunk are waited for in a worker thread, given
    up at the deadline; the later chunks are read on the caller's thread."""
    if chosen.bounds_deadline:
        return chosen.stream(request)
    return _stream_in_thread(chosen, request, seconds)


def _stream_in_thread(chosen: ChatBackend, request: ChatRequest, seconds: float) -> Generator[ChatChunk, None, None]:
    """``stream_within``'s thread. The backend's code runs in one context throughout, in whichever
    thread: a contextvar it sets in one chunk (a tracing span) it can reset in a later one."""
    context, end = contextvars.copy_context(), object()  # (a chunk that is None is the plugin's error)

    def opened(_: None) -> tuple[Iterator[ChatChunk], tuple[ChatChunk, ...]]:
        chunks = context.run(lambda: iter(chosen.stream(request)))
        first = context.run(next, chunks, end)
        return chunks, () if first is end else (first,)  # type: ignore[return-value]

    try:
        chunks, first = call_within(opened, None, seconds)
    except GaveUp:
        raise late(request) from None
    try:
        yield from first
        while (chunk := context.run(next, chunks, end)) is not end:
            yield chunk  # type: ignore[misc]
    finally:
        close = getattr(chunks, "close", None)  # a generator's closes the HTTP response
        if close is not None:
            context.run(close)
