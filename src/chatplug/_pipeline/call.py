"""A call as the pipeline holds it: the public function's arguments (``arguments.CallArguments``),
checked into a ``Call``: its settings, its targets (the backend and model, then the
fallbacks), its ``Plan`` of attempts (``retry``), and its place in the cache and the rate limit.

``attempts`` runs it; nothing here sends anything.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any

from .._core.exceptions import APITimeoutError, ErrorKind, InvalidInputError
from .._core.settings import MAX_RETRIES, NAMES, TIMEOUT, settings
from .._core.values import CANCELLED, EMPTY, ChatRequest, ChatResult, LLMResponse, Message
from .arguments import CallArguments
from .resolve import build_request, check_arguments, choose, split_features
from .response import as_chatplug_error
from .retry import OPT_IN, TRANSIENT, Plan, Target
from .validate import check_options, checked_messages, prompt_messages

if TYPE_CHECKING:
    from .._core.backend import ChatBackend
    from .._core.settings import Snapshot
    from .._plugins.manager import Plugins
    from .cache import Cache
    from .ratelimit import Ticket


class Call:
    """A call's arguments, checked; the targets chosen for it; its ``Plan`` of attempts; and the
    request of its latest attempt."""

    def __init__(self, manager: Plugins, arguments: CallArguments) -> None:
        #: The settings as this call reads them, all at once (``settings.Snapshot``).
        self.config = config = settings.snapshot()
        model, self.temperature, self.limit, backend = check_arguments(
            arguments.model_name, arguments.temperature, arguments.max_tokens, arguments.backend
        )
        backends = manager.backends.entries
        name, model = choose(backend, model, backends, config)
        self.arguments = arguments
        self.messages: tuple[Message, ...] | None = None  # made with the first request
        targets = [Target(name, model)]
        try:
            timeout, retries, kinds, use_cache = self._take(dict(arguments.options), targets, backends)
        except InvalidInputError as exc:
            exc.backend = name  # the error names the backend the call was for, like every other
            raise
        self.timeout = config.timeout if timeout is None else timeout
        self.plan = Plan(targets, retries, self.timeout, kinds)
        #: The request of the latest attempt (``None`` before the first is built).
        self.request: ChatRequest | None = None
        place = config.cache if use_cache else None
        self.cache: Cache | None = None
        if place is not None:
            from .cache import cache_for

            self.cache = cache_for(place)
            self.cache_ttl = config.cache_ttl  # read now: a bad one fails the call before anything is sent
        self.cache_key: str | None = None
        #: The cached reply that answers this call, if one does: nothing is sent then.
        self.hit: ChatResult | None = None
        self.rate_limits = config.rate_limit
        self.ticket: Ticket | None = None  # the last attempt's place in the rate limit

    def _take(
        self, options: dict[str, Any], targets: list[Target], backends: Container[str]
    ) -> tuple[float | None, int, frozenset[ErrorKind], bool]:
        """Take chatplug's own keyword options out of ``options``: (timeout, max_retries,
        fallback_on, cache); the fallbacks go onto ``targets``; the tools and structured output
        become ``features``, and the rest, checked, the provider ``options``."""
        config = self.config
        timeout = TIMEOUT.argument("timeout", options.pop("timeout")) if "timeout" in options else None
        retries = options.pop("max_retries", None)
        retries = config.max_retries if retries is None else MAX_RETRIES.argument("max_retries", retries)
        targets += fallback_targets(options.pop("fallbacks", None), backends, config)
        kinds = error_kinds(options.pop("fallback_on", None), config)
        use_cache = options.pop("cache", True)
        if not isinstance(use_cache, bool):
            raise InvalidInputError(f"cache must be True (the configured LLM_CACHE) or False, got {use_cache!r}.")
        self.features, self.options = split_features(options) if options else (EMPTY, EMPTY)
        if self.options:
            check_options(self.options)
        return timeout, retries, kinds, use_cache

    def build_request(self, chosen: ChatBackend) -> ChatRequest:
        """The request for the plan's current target (``APITimeoutError`` past the deadline)."""
        self.plan.remaining()
        if self.messages is None:
            given = self.arguments
            # The messages are checked once the backend is chosen: their errors come after the
            # arguments' own.
            if given.from_messages:
                self.messages = checked_messages(given.messages)
            else:
                self.messages = prompt_messages(given.prompt)
        target = self.plan.target
        self.request = build_request(
            chosen, target.backend, target.model, self.messages, self.temperature, self.limit, self.options,
            self.features, self.timeout, self.plan.deadline, self.config,
        )  # fmt: skip
        return self.request

    def failed(self, error: Exception, manager: Plugins) -> float:
        """The seconds to wait before the next attempt, after the latest one failed with ``error``;
        raises the call's error when there is no next attempt."""
        mapped = as_chatplug_error(error, where(manager, self.request))
        if mapped.backend is None and self.request is not None:
            mapped.backend = self.request.backend
        wait = self.plan.failed(mapped)
        if wait is None:
            raise self.plan.report(mapped)
        return wait

    def finish(self, response: LLMResponse) -> LLMResponse:
        """``response`` told how many attempts it took, and why the earlier ones failed."""
        response.attempts = self.plan.attempts
        if self.plan.errors:
            response.attempt_errors = self.plan.earlier_errors(response.success)
        if self.hit is not None:
            response.cached = True
        return response

    # -- the cache and the rate limit ---------------------------------------------------

    def cache_key_for(self, chosen: ChatBackend, request: ChatRequest) -> str | None:
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
        if not self.rate_limits:
            return None
        from .ratelimit import estimate, limits_for

        limits = limits_for(self.rate_limits, request.backend)
        if limits is None:
            return None
        return limits[0], limits[1], estimate(request) if limits[1] is not None else 0

    def storing(self, response: LLMResponse) -> bool:
        """Whether ``response`` goes into the cache: a whole success that came from the provider."""
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
        """The async twin of ``after``."""
        if self.storing(response):
            assert self.cache is not None and self.cache_key is not None
            await self.cache.aput(self.cache_key, response, self.cache_ttl)
        ticket = self.settled(response)
        if ticket is not None:
            await ticket.asettle(response.tokens_used)


def fallback_targets(value: object, backends: Container[str], config: Snapshot) -> list[Target]:
    """The fallback targets of a call: ``fallbacks=`` or ``LLM_FALLBACKS``, each ``backend:model``
    or a backend alone (its default model)."""
    names = config.fallbacks if value is None else NAMES.argument("fallbacks", value)
    targets = []
    for name in names or ():
        backend, _, model = name.partition(":")
        if backend not in backends:
            raise InvalidInputError(f"fallback {name!r} names no installed backend: use 'backend:model'.")
        targets.append(Target(backend, model.strip() or None))
    return targets


_KINDS = {kind.value: kind for kind in ErrorKind}


def error_kinds(value: object, config: Snapshot) -> frozenset[ErrorKind]:
    """The kinds of ``fallback_on=`` (or ``LLM_FALLBACK_ON``): ``not_found`` and ``auth`` may be
    added to the transient ones."""
    names = config.fallback_on if value is None else NAMES.argument("fallback_on", value)
    if not names:
        return frozenset()
    kinds = frozenset(_KINDS[name] for name in names if name in _KINDS)
    if len(kinds) != len(set(names)) or not kinds <= OPT_IN | TRANSIENT:
        raise InvalidInputError(
            f"fallback_on takes {', '.join(sorted(k.value for k in OPT_IN))} (the transient kinds always fall "
            f"back), got {names!r}."
        )
    return kinds


def where(manager: Plugins, request: ChatRequest | None) -> str:
    """Who failed, for an error a backend did not map: the backend and its plugin."""
    return manager.backends.describe(request.backend) if request is not None else "chatplug"


def late(request: ChatRequest) -> APITimeoutError:
    """The error of an attempt its call's deadline ended."""
    return APITimeoutError(
        f"{request.backend} did not answer within {request.timeout:g} s (the call's deadline). Raise "
        "LLM_TIMEOUT or pass timeout=, or lower max_tokens."
    )
