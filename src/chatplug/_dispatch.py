"""A call's way through chatplug: check, choose the backend, build the request, call the
backend, and observe. The sync and async twins differ only in how they call the backend (and
the async one makes a backend's first use off the event loop).

Steps each live in their own module: ``_resolve`` (arguments, backend and model, the request),
``_validate`` (messages and options), ``_response`` (results, failures, logging) and
``_plugins`` (the backends and the observers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidInputError
from ._resolve import build_request, check_arguments, choose, split_features
from ._response import as_chatplug_error, failed, succeeded
from ._types import ChatRequest, LLMResponse, Message
from ._validate import check_options

if TYPE_CHECKING:
    from ._backend import ChatBackend
    from ._plugins import Plugins

ToMessages = Callable[[Any], "tuple[Message, ...]"]

_plugins: Plugins | None = None


def plugins() -> Plugins:
    """The plugin manager, imported on first use (pluggy is not needed to import chatplug)."""
    global _plugins
    if _plugins is None:
        from ._plugins import plugins as made

        _plugins = made
    return _plugins


class _Call:
    """A call's arguments, checked, and the backend and model chosen for it."""

    __slots__ = ("features", "limit", "model", "name", "options", "temperature")

    def __init__(
        self,
        manager: Plugins,
        model_name: object,
        temperature: object,
        max_tokens: object,
        backend: object,
        options: Mapping[str, Any],
    ) -> None:
        model, self.temperature, self.limit, backend_name = check_arguments(
            model_name, temperature, max_tokens, backend
        )
        self.name, self.model = choose(backend_name, model, manager.backends.entries.__contains__)
        try:
            self.features, self.options = split_features(options)
            check_options(self.options)
        except InvalidInputError as exc:
            exc.backend = self.name  # the error names the backend the call was for, like every other
            raise

    def request(self, chosen: ChatBackend, messages: tuple[Message, ...]) -> ChatRequest:
        return build_request(
            chosen, self.name, self.model, messages, self.temperature, self.limit, self.options, self.features
        )


def begin_sync(
    manager: Plugins,
    to_messages: ToMessages,
    payload: object,
    model_name: object,
    temperature: object,
    max_tokens: object,
    backend: object,
    options: Mapping[str, Any],
) -> tuple[ChatBackend, ChatRequest]:
    """Everything before the backend is called: the backend and the request, or an error."""
    manager.load()
    call = _Call(manager, model_name, temperature, max_tokens, backend, options)
    chosen = manager.backends.get(call.name)
    return chosen, call.request(chosen, to_messages(payload))


async def begin_async(
    manager: Plugins,
    to_messages: ToMessages,
    payload: object,
    model_name: object,
    temperature: object,
    max_tokens: object,
    backend: object,
    options: Mapping[str, Any],
) -> tuple[ChatBackend, ChatRequest]:
    """``begin_sync`` without blocking the loop: first uses are made in a worker thread."""
    if not manager.loaded:  # the first call reads entry points and imports plugins: off the loop
        await _off_loop(manager.load)
    call = _Call(manager, model_name, temperature, max_tokens, backend, options)
    # A backend's first use imports its SDK (~0.4 s) and may build clients: off the loop.
    backends = manager.backends
    chosen = backends.get(call.name) if backends.ready(call.name) else await _off_loop(backends.get, call.name)
    return chosen, call.request(chosen, to_messages(payload))


def call_sync(
    to_messages: ToMessages,
    payload: object,
    model_name: object,
    temperature: object,
    max_tokens: object,
    backend: object,
    options: Mapping[str, Any],
) -> LLMResponse:
    start = time.perf_counter()
    manager = plugins()
    request: ChatRequest | None = None
    try:
        chosen, request = begin_sync(
            manager, to_messages, payload, model_name, temperature, max_tokens, backend, options
        )
        manager.on_request(request)
        result = chosen.complete(request)
    except Exception as exc:
        response = failed(as_chatplug_error(exc, where(manager, request)), request, start, model_name)
    else:
        response = succeeded(result, request, start, manager.backends.describe)
    manager.on_response(request, response)
    return response


async def call_async(
    to_messages: ToMessages,
    payload: object,
    model_name: object,
    temperature: object,
    max_tokens: object,
    backend: object,
    options: Mapping[str, Any],
) -> LLMResponse:
    start = time.perf_counter()
    manager = plugins()
    request: ChatRequest | None = None
    try:
        chosen, request = await begin_async(
            manager, to_messages, payload, model_name, temperature, max_tokens, backend, options
        )
        manager.on_request(request)
        result = await chosen.acomplete(request)
    except Exception as exc:
        response = failed(as_chatplug_error(exc, where(manager, request)), request, start, model_name)
    else:
        response = succeeded(result, request, start, manager.backends.describe)
    manager.on_response(request, response)
    return response


async def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    import asyncio  # here, not at the top: it costs `import chatplug` ~20 ms, and an async caller has it

    return await asyncio.to_thread(function, *args)


def where(manager: Plugins, request: ChatRequest | None) -> str:
    """Who failed, for an error a backend did not map: the backend and its plugin."""
    return manager.backends.describe(request.backend) if request is not None else "chatplug"
