"""A call's way through chatplug: check, choose the backend, build the request, call the
backend (again, or another one, as the retry and fallback plan says), and observe. The sync and
async twins differ only in how they call the backend and wait (and the async one makes a
backend's first use off the event loop, and bounds each attempt by the deadline on the loop).

Steps each live in their own module: ``_resolve`` (arguments, backend and model, the request),
``_validate`` (messages and options), ``_retry`` (the attempts: retries, fallbacks, deadline),
``_response`` (results, failures, logging) and ``_plugins`` (the backends and the observers);
``_cache`` (the response cache: looked up once the first request is built, before anything is
sent; a success stored) and ``_ratelimit`` (the client-side limits: asked before each attempt).
Both are imported only when configured: with neither, a call reads two settings and no more.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._core.exceptions import APITimeoutError, ErrorKind, InvalidInputError
from .._core.settings import MAX_RETRIES, NAMES, TIMEOUT, settings
from .._core.values import EMPTY, ChatRequest, ChatResult, LLMResponse, Message
from .resolve import build_request, check_arguments, choose, split_features
from .response import as_chatplug_error, failed, succeeded
from .retry import OPT_IN, TRANSIENT, Plan, Target
from .validate import check_options

if TYPE_CHECKING:
    from contextvars import ContextVar

    from .._core.backend import ChatBackend
    from .._core.settings import Snapshot
    from .._plugins.manager import Plugins
    from .cache import Cache
    from .ratelimit import Ticket
    from .stream import ChatChunk

ToMessages = Callable[[Any], "tuple[Message, ...]"]
T = TypeVar("T")

_plugins: Plugins | None = None


def plugins() -> Plugins:
    """The plugin manager, imported on first use (pluggy is not needed to import chatplug)."""
    global _plugins
    if _plugins is None:
        from .._plugins.manager import plugins as made

        _plugins = made
    return _plugins


_deadline: ContextVar[float | None] | None = None


def deadline_var() -> ContextVar[float | None]:
    """The deadline of sync attempts (``_deadline.DEADLINE``), imported on first use: async-only
    programs never need it, and an import statement in the loop costs every call ~1 us."""
    global _deadline
    if _deadline is None:
        from .._http.deadline import DEADLINE

        _deadline = DEADLINE
    return _deadline


class Call:
    """A call's arguments, checked; the targets chosen for it (the backend and model, then the
    fallbacks); and its ``Plan`` of attempts (see ``_retry``)."""

    # Slots: a call's state is made for every call, and held across awaits by thousands at once.
    __slots__ = (
        "cache", "cache_key", "cache_ttl", "config", "features", "hit", "limit", "messages", "options", "payload",
        "plan", "rate_limits", "temperature", "ticket", "timeout", "to_messages",
    )  # fmt: skip

    def __init__(
        self,
        manager: Plugins,
        to_messages: ToMessages,
        payload: object,
        model_name: object,
        temperature: object,
        max_tokens: object,
        backend: object,
        options: Mapping[str, Any],
    ) -> None:
        #: The settings as this call reads them, all at once (``_config.Snapshot``).
        self.config = config = settings.snapshot()
        if model_name is None and temperature is None and max_tokens is None and backend is None:
            model = limit = backend_name = None  # the common case: nothing to check
        else:
            model, temperature, limit, backend_name = check_arguments(model_name, temperature, max_tokens, backend)
        is_backend = manager.backends.entries.__contains__
        name, model = choose(backend_name, model, is_backend, config)
        self.to_messages, self.payload = to_messages, payload
        self.messages: tuple[Message, ...] | None = None
        self.temperature, self.limit = temperature, limit  # None: from the settings, when the request is built
        targets = [Target(name, model)]
        # The common case, no keyword option and no fallback configured, skips the option-taking
        # step (the settings read in its order all the same, and so their errors).
        if not options:
            retries = config.max_retries
        if options or config.fallbacks or config.fallback_on:
            try:
                timeout, retries, kinds, use_cache = self._take(dict(options), targets, is_backend)
            except InvalidInputError as exc:
                exc.backend = name  # the error names the backend the call was for, like every other
                raise
        else:
            timeout, kinds, use_cache = None, NO_KINDS, True
            self.features = self.options = EMPTY
        self.timeout = config.timeout if timeout is None else timeout
        self.plan = Plan(targets, retries, self.timeout, kinds)
        place = config.cache if use_cache else None
        if place is None:
            self.cache: Cache | None = None
        else:
            from .cache import cache_for

            self.cache = cache_for(place)
            self.cache_ttl = config.cache_ttl  # read now: a bad one fails the call before anything is sent
        self.cache_key: str | None = None
        #: The cached reply that answers this call, if one does: nothing is sent then.
        self.hit: ChatResult | None = None
        self.rate_limits = config.rate_limit
        self.ticket: Ticket | None = None  # the last attempt's place in the rate limit

    def _take(
        self, options: dict[str, Any], targets: list[Target], is_backend: Callable[[str], bool]
    ) -> tuple[float | None, int, frozenset[ErrorKind], bool]:
        """Take chatplug's own keyword options out of ``options``: (timeout, max_retries,
        fallback_on, cache); the fallbacks go onto ``targets``; the tools and structured output
        become ``features``, and the rest, checked, the provider ``options``. Most calls pass
        none: each step is skipped when neither the option nor its setting is there."""
        config = self.config
        timeout = TIMEOUT.argument("timeout", options.pop("timeout")) if "timeout" in options else None
        retries = options.pop("max_retries", None)
        retries = config.max_retries if retries is None else MAX_RETRIES.argument("max_retries", retries)
        fallbacks = options.pop("fallbacks", None)
        if fallbacks is not None or config.fallbacks:
            targets += fallback_targets(fallbacks, is_backend, config)
        fallback_on = options.pop("fallback_on", None)
        kinds = error_kinds(fallback_on, config) if fallback_on is not None or config.fallback_on else NO_KINDS
        use_cache = options.pop("cache", True)
        if not isinstance(use_cache, bool):
            raise InvalidInputError(f"cache must be True (the configured LLM_CACHE) or False, got {use_cache!r}.")
        self.features, self.options = split_features(options) if options else (EMPTY, EMPTY)
        if self.options:
            check_options(self.options)
        return timeout, retries, kinds, use_cache

    def request(self, chosen: ChatBackend) -> ChatRequest:
        """The request for the plan's current target (``APITimeoutError`` past the deadline)."""
        self.plan.remaining()
        if self.messages is None:
            self.messages = self.to_messages(self.payload)
        target = self.plan.target
        return build_request(
            chosen, target.backend, target.model, self.messages, self.temperature, self.limit, self.options,
            self.features, self.timeout, self.plan.deadline, self.config,
        )  # fmt: skip

    def failed(self, error: Exception, manager: Plugins, request: ChatRequest) -> float:
        """The seconds to wait before the next attempt; raises the error when there is none."""
        mapped = as_chatplug_error(error, where(manager, request))
        if mapped.backend is None:
            mapped.backend = request.backend
        wait = self.plan.failed(mapped)
        if wait is None:
            raise self.plan.report(mapped)
        return wait

    def finish(self, response: LLMResponse) -> LLMResponse:
        response.attempts = self.plan.attempts
        if self.plan.errors:
            response.attempt_errors = self.plan.earlier_errors(response.success)
        if self.hit is not None:
            response.cached = True
        return response

    # -- the cache and the rate limit ---------------------------------------------------

    def key(self, chosen: ChatBackend, request: ChatRequest) -> str | None:
        """The cache key of the call's first request, which holds where it goes (``chosen``'s
        ``endpoint``); ``None`` past it, or without a cache."""
        if self.cache is None or self.cache_key is not None:
            return None
        from .cache import key

        endpoint = chosen.endpoint(request)
        if not isinstance(endpoint, str):
            raise TypeError(f"{type(chosen).__name__}.endpoint() returned {type(endpoint).__name__}, not a str")
        self.cache_key = key(request, endpoint)
        return self.cache_key

    def limits(self, request: ChatRequest) -> tuple[float | None, float | None, int] | None:
        """(rpm, tpm, estimated tokens) of the attempt's backend, or ``None``: no limit."""
        from .ratelimit import estimate, limits_for

        limits = limits_for(self.rate_limits, request.backend)
        if limits is None:
            return None
        return limits[0], limits[1], estimate(request) if limits[1] is not None else 0

    def storing(self, response: LLMResponse) -> bool:
        """Whether ``response`` goes into the cache: a whole success that came from the provider."""
        from .stream import CANCELLED

        return (
            self.cache is not None
            and self.cache_key is not None
            and self.hit is None
            and response.success
            and response.finish_reason != CANCELLED
        )

    def settled(self, response: LLMResponse) -> Ticket | None:
        """The ticket whose estimate the real usage of ``response`` replaces, if any."""
        ticket = self.ticket
        return ticket if ticket is not None and response.success and response.usage_reported else None

    def after(self, response: LLMResponse) -> None:
        """Store a success in the cache, and count its real tokens in the rate limit."""
        if self.storing(response):
            assert self.cache is not None and self.cache_key is not None
            self.cache.put(self.cache_key, response, self.cache_ttl)
        ticket = self.settled(response)
        if ticket is not None:
            ticket.settle(response.tokens_used)

    async def aafter(self, response: LLMResponse) -> None:
        if self.storing(response):
            assert self.cache is not None and self.cache_key is not None
            await self.cache.aput(self.cache_key, response, self.cache_ttl)
        ticket = self.settled(response)
        if ticket is not None:
            await ticket.asettle(response.tokens_used)


def begin_sync(manager: Plugins, *arguments: Any) -> tuple[Call, ChatBackend, ChatRequest]:
    """The call checked, and its first attempt's backend and request; or an error."""
    if not manager.loaded:
        manager.load()
    call = Call(manager, *arguments)
    chosen, request = next_sync(manager, call)
    return call, chosen, request


def target_sync(manager: Plugins, call: Call) -> tuple[ChatBackend, ChatRequest]:
    """The backend of the plan's current target (made on its first use) and its request: the
    call checked, nothing yet asked of the cache, the rate limit or the observers."""
    backends, name = manager.backends, call.plan.target.backend
    chosen = backends.made(name)
    if chosen is None:
        chosen = backends.get(name)
        call.plan.restart()  # making the backend (importing its SDK) is not the server's time
    return chosen, call.request(chosen)


def next_sync(manager: Plugins, call: Call) -> tuple[ChatBackend, ChatRequest]:
    """The backend and request of the plan's next attempt."""
    chosen, request = target_sync(manager, call)
    if call.cache is not None:
        key = call.key(chosen, request)
        if key is not None:
            call.hit = call.cache.get(key)
            if call.hit is not None:
                return chosen, request  # answered from the cache: nothing is sent
    if call.rate_limits:
        limits = call.limits(request)
        if limits is not None:
            from . import ratelimit as _ratelimit

            wait, call.ticket = _ratelimit.limiter().acquire(request.backend, *limits, call.plan.remaining())
            if call.ticket is None:
                raise _ratelimit.too_long(request.backend, wait)
            if wait > 0:
                _ratelimit.sleep(wait)
    if manager.observed:
        manager.on_request(request)
    call.plan.attempts += 1
    return chosen, request


async def begin_async(manager: Plugins, *arguments: Any) -> tuple[Call, ChatBackend, ChatRequest]:
    """``begin_sync`` without blocking the loop: first uses are made in a worker thread."""
    if not manager.loaded:  # the first call reads entry points and imports plugins: off the loop
        await _off_loop(manager.load)
    call = Call(manager, *arguments)
    chosen, request = await next_async(manager, call)
    return call, chosen, request


async def target_async(manager: Plugins, call: Call) -> tuple[ChatBackend, ChatRequest]:
    """``target_sync`` without blocking the loop: a backend's first use imports its SDK (~0.4 s)
    and may build clients, so it is made in a worker thread."""
    backends, name = manager.backends, call.plan.target.backend
    chosen = backends.made(name)
    if chosen is None:
        chosen = await _off_loop(backends.get, name)
        call.plan.restart()  # making the backend (importing its SDK) is not the server's time
    return chosen, call.request(chosen)


async def next_async(manager: Plugins, call: Call) -> tuple[ChatBackend, ChatRequest]:
    chosen, request = await target_async(manager, call)
    if call.cache is not None:
        key = call.key(chosen, request)
        if key is not None:
            call.hit = await call.cache.aget(key)
            if call.hit is not None:
                return chosen, request  # answered from the cache: nothing is sent
    if call.rate_limits:
        limits = call.limits(request)
        if limits is not None:
            from . import ratelimit as _ratelimit

            wait, call.ticket = await _ratelimit.limiter().aacquire(request.backend, *limits, call.plan.remaining())
            if call.ticket is None:
                raise _ratelimit.too_long(request.backend, wait)
            if wait > 0:
                await _ratelimit.asleep(wait)
    if manager.observed:
        manager.on_request(request)
    call.plan.attempts += 1
    return chosen, request


def call_sync(*arguments: Any) -> LLMResponse:
    """A whole call: attempts until one succeeds or the plan gives up."""
    start = time.perf_counter()
    manager = _plugins or plugins()
    call: Call | None = None
    request: ChatRequest | None = None
    try:
        call, chosen, request = begin_sync(manager, *arguments)
        result = call.hit
        # The attempt's deadline, for the HTTP clients wrapped by toolkit.deadline_client: their
        # sockets give up when it passes (a contextvar: each thread has its own).
        deadline = _deadline or deadline_var()
        while result is None:
            token = deadline.set(request.deadline)
            try:
                result = complete_within(chosen, request, call.plan)
                call.plan.succeeded()
                break
            except Exception as exc:
                wait = call.failed(exc, manager, request)
            finally:
                deadline.reset(token)
            if wait:
                time.sleep(wait)  # a backoff or a Retry-After, within the deadline
            chosen, request = next_sync(manager, call)
    except Exception as exc:
        response = failed(as_chatplug_error(exc, where(manager, request)), request, start, arguments[2])
    else:
        response = succeeded(result, request, start, manager.backends.describe)
    if call is not None:
        call.finish(response)
        if call.cache is not None or call.ticket is not None:
            call.after(response)
    if manager.observed:
        manager.on_response(request, response)
    return response


async def call_async(*arguments: Any) -> LLMResponse:
    """The async twin of ``call_sync``: each attempt bounded by the deadline, on the loop."""
    import asyncio

    start = time.perf_counter()
    manager = _plugins or plugins()
    call: Call | None = None
    request: ChatRequest | None = None
    try:
        call, chosen, request = await begin_async(manager, *arguments)
        result = call.hit
        while result is None:
            try:
                result = await within(chosen.acomplete(request), call.plan.remaining(), request)
                call.plan.succeeded()
                break
            except Exception as exc:
                wait = call.failed(exc, manager, request)
            if wait:
                await asyncio.sleep(wait)
            chosen, request = await next_async(manager, call)
    except Exception as exc:
        response = failed(as_chatplug_error(exc, where(manager, request)), request, start, arguments[2])
    else:
        response = succeeded(result, request, start, manager.backends.describe)
    if call is not None:
        call.finish(response)
        if call.cache is not None or call.ticket is not None:
            await call.aafter(response)
    if manager.observed:
        manager.on_response(request, response)
    return response


async def within(awaitable: Awaitable[T], seconds: float, request: ChatRequest) -> T:
    """``awaitable``, cancelled when ``seconds`` pass: the hard deadline of an async attempt. Awaited
    in the caller's task (``asyncio.timeout``, or its equivalent on Python 3.10: ``_deadline.timeout``),
    so a stream's first chunk is read in the same context as the rest. A ``TimeoutError`` of the
    attempt's own (``asyncio.TimeoutError`` before 3.11) is a timeout too, as the deadline's."""
    from .._http.deadline import TIMEOUTS, timeout

    try:
        async with timeout(seconds):
            return await awaitable
    except TIMEOUTS:
        raise late(request) from None


def complete_within(chosen: ChatBackend, request: ChatRequest, plan: Plan) -> ChatResult:
    """``chosen.complete(request)`` within the call's deadline: called here when the backend ends
    its sync calls by the deadline itself (``bounds_deadline``), else run in a worker thread that
    is given up at the deadline (``_deadline.call_within``)."""
    if chosen.bounds_deadline:
        return chosen.complete(request)
    from .._http.deadline import GaveUp, call_within

    try:
        return call_within(chosen.complete, request, plan.remaining())
    except GaveUp:
        raise late(request) from None


def stream_within(chosen: ChatBackend, request: ChatRequest, plan: Plan) -> Iterator[ChatChunk]:
    """``chosen.stream(request)`` within the call's deadline, as ``complete_within``: for a
    backend that does not bound its own sync calls, the stream's opening and first chunk are
    waited for in a worker thread, up to the deadline."""
    if chosen.bounds_deadline:
        return chosen.stream(request)
    return _stream_in_thread(chosen, request, plan.remaining())


def _stream_in_thread(chosen: ChatBackend, request: ChatRequest, seconds: float) -> Generator[ChatChunk, None, None]:
    """``stream_within``'s thread: the later chunks are read on the caller's thread. The backend's
    code runs in one context throughout, in whichever thread: a contextvar it sets in one chunk
    (a tracing span) it can reset in a later one."""
    import contextvars

    from .._http.deadline import GaveUp, call_within

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


def late(request: ChatRequest) -> APITimeoutError:
    """The error of an attempt its call's deadline ended."""
    return APITimeoutError(
        f"{request.backend} did not answer within {request.timeout:g} s (the call's deadline). Raise "
        "LLM_TIMEOUT or pass timeout=, or lower max_tokens."
    )


def fallback_targets(value: object, is_backend: Callable[[str], bool], config: Snapshot) -> list[Target]:
    """The fallback targets of a call: ``fallbacks=`` or ``LLM_FALLBACKS``, each ``backend:model``
    or a backend alone (its default model)."""
    names = config.fallbacks if value is None else NAMES.argument("fallbacks", value)
    if not names:
        return []
    targets = []
    for name in names:
        backend, _, model = name.partition(":")
        if not is_backend(backend):
            raise InvalidInputError(f"fallback {name!r} names no installed backend: use 'backend:model'.")
        targets.append(Target(backend, model.strip() or None))
    return targets


NO_KINDS: frozenset[ErrorKind] = frozenset()
_KINDS = {kind.value: kind for kind in ErrorKind}


def error_kinds(value: object, config: Snapshot) -> frozenset[ErrorKind]:
    """The kinds of ``fallback_on=`` (or ``LLM_FALLBACK_ON``): ``not_found`` and ``auth`` may be
    added to the transient ones."""
    names = config.fallback_on if value is None else NAMES.argument("fallback_on", value)
    if not names:
        return NO_KINDS
    kinds = frozenset(_KINDS[name] for name in names if name in _KINDS)
    if len(kinds) != len(set(names)) or not kinds <= OPT_IN | TRANSIENT:
        raise InvalidInputError(
            f"fallback_on takes {', '.join(sorted(k.value for k in OPT_IN))} (the transient kinds always fall "
            f"back), got {names!r}."
        )
    return kinds


async def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio  # here, not at the top: it costs `import chatplug` ~20 ms, and an async caller has it

    return await asyncio.to_thread(function, *args)


def where(manager: Plugins, request: ChatRequest | None) -> str:
    """Who failed, for an error a backend did not map: the backend and its plugin."""
    return manager.backends.describe(request.backend) if request is not None else "chatplug"
