"""The four public functions and the dispatch layer behind them.

Everything every backend would otherwise repeat lives here, once: input validation, defaults
from configuration, choosing the backend, timing, observability hooks, logging, and turning
a ``ChatplugError`` (or a misbehaving plugin) into a failed ``LLMResponse``. The sync and async
twins differ only in how they call the backend.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._backend import ChatBackend
from ._config import ARGUMENT, DEFAULT, settings
from ._exceptions import ChatplugError, InvalidInputError, PluginError
from ._plugins import registry
from ._types import ChatRequest, ChatResult, LLMResponse, Message

logger = logging.getLogger("chatplug")

ROLES = ("system", "user", "assistant")

# Keyword options that would override what chatplug itself decides, with what to do instead.
RESERVED = {
    "model": "use model_name= or a 'backend:model' prefix",
    "messages": "pass them as the first argument",
    "stream": "chatplug returns whole completions",
    "timeout": "set LLM_TIMEOUT or settings.timeout",
    "options": "pass provider options as keyword arguments, e.g. num_ctx=4096",
}


# -- the public functions ----------------------------------------------------------------


def generate_completion_sync(
    prompt: str,
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> LLMResponse:
    """Ask for a completion of ``prompt`` (sent as one user message). Never raises for
    provider or transport failures: check ``response.success`` / ``response.error``."""
    return _dispatch_sync(_prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)


async def generate_completion_async(
    prompt: str,
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> LLMResponse:
    """Async twin of ``generate_completion_sync``; never blocks the event loop."""
    return await _dispatch_async(_prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)


def generate_completion_with_messages_sync(
    messages: Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> LLMResponse:
    """Ask for the next assistant message after ``messages``
    (``[{"role": "system"|"user"|"assistant", "content": str}, ...]``, never mutated)."""
    return _dispatch_sync(_copy_messages, messages, model_name, temperature, max_tokens, backend, options)


async def generate_completion_with_messages_async(
    messages: Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> LLMResponse:
    """Async twin of ``generate_completion_with_messages_sync``."""
    return await _dispatch_async(_copy_messages, messages, model_name, temperature, max_tokens, backend, options)


# -- dispatch ----------------------------------------------------------------------------


def _dispatch_sync(
    to_messages: Any,
    payload: Any,
    model_name: str | None,
    temperature: float | None,
    max_tokens: int | None,
    backend: str | None,
    options: dict[str, Any],
) -> LLMResponse:
    start = time.perf_counter()
    request: ChatRequest | None = None
    try:
        name, model = _resolve(model_name, temperature, max_tokens, backend, options)
        chosen = registry.get(name)
        request = _prepare(chosen, name, model, to_messages(payload), temperature, max_tokens, options)
        registry.notify("on_request", request=request)
        result = chosen.complete(request)
    except Exception as exc:
        return _failed(exc, request, start, model_name)
    return _succeeded(result, request, start)


async def _dispatch_async(
    to_messages: Any,
    payload: Any,
    model_name: str | None,
    temperature: float | None,
    max_tokens: int | None,
    backend: str | None,
    options: dict[str, Any],
) -> LLMResponse:
    start = time.perf_counter()
    request: ChatRequest | None = None
    try:
        import asyncio  # here, not at the top: it costs `import chatplug` ~20 ms, and an async caller has it

        if not registry.loaded:  # the first call reads entry points and imports plugins: off the loop
            await asyncio.to_thread(registry.load)
        name, model = _resolve(model_name, temperature, max_tokens, backend, options)
        # A backend's first use imports its SDK (~0.4 s) and may build clients: off the loop.
        chosen = registry.get(name) if registry.ready(name) else await asyncio.to_thread(registry.get, name)
        request = _prepare(chosen, name, model, to_messages(payload), temperature, max_tokens, options)
        registry.notify("on_request", request=request)
        result = await chosen.acomplete(request)
    except Exception as exc:
        return _failed(exc, request, start, model_name)
    return _succeeded(result, request, start)


def _resolve(
    model_name: str | None,
    temperature: float | None,
    max_tokens: int | None,
    backend: str | None,
    options: dict[str, Any],
) -> tuple[str, str | None]:
    """Check the call's arguments and choose the backend and model (``None``: the default)."""
    if temperature is not None:
        _check_temperature(temperature)
    if max_tokens is not None:
        _check_max_tokens(max_tokens)
    if model_name is not None and (not isinstance(model_name, str) or not model_name.strip()):
        raise InvalidInputError(f"model_name must be a non-empty string, got {model_name!r}.")
    if backend is not None and (not isinstance(backend, str) or not backend.strip()):
        raise InvalidInputError(f"backend must be a non-empty string, got {backend!r}.")
    name, model = _resolve_backend_and_model(
        backend.strip() if backend is not None else None, model_name.strip() if model_name is not None else None
    )
    try:
        _check_options(options)
    except InvalidInputError as exc:
        exc.backend = name  # the error names the backend the call was for, like every other
        raise
    return name, model


def _prepare(
    chosen: ChatBackend,
    name: str,
    model: str | None,
    messages: tuple[Message, ...],
    temperature: float | None,
    max_tokens: int | None,
    options: dict[str, Any],
) -> ChatRequest:
    """The request for ``chosen``, with what the call left open filled from configuration."""
    return ChatRequest(
        messages=messages,
        model=model or chosen.default_model or settings.model_name,
        temperature=settings.temperature if temperature is None else float(temperature),
        max_tokens=settings.max_tokens if max_tokens is None else int(max_tokens),
        timeout=settings.timeout,
        options=dict(options),
        backend=name,
        max_retries=settings.max_retries,
    )


def _resolve_backend_and_model(backend: str | None, model_name: str | None) -> tuple[str, str | None]:
    """The backend and model for a call; the model is ``None`` when left to the backend's default.

    A ``backend:model`` prefix (one naming an installed backend: ``llama3.2:1b`` is an Ollama
    model) selects its backend when the model name comes from as high a place as the backend
    setting: call > code > environment. So ``LLM_MODEL_NAME=openai:gpt-4o`` selects openai
    over ``LLM_BACKEND``, but not over ``settings.backend`` set in code or ``backend=``. A model
    name prefixed for another backend than the chosen one is not sent to it.
    """
    model: str | None = model_name
    model_source = ARGUMENT if model_name is not None else settings.source("model_name")
    if model is None and model_source > DEFAULT:
        model = settings.model_name
    backend_source = ARGUMENT if backend is not None else settings.source("backend")
    chosen = backend or settings.backend
    if model is None:
        return chosen, None
    prefix, sep, rest = model.partition(":")
    if not (sep and registry.is_backend(prefix)):
        return chosen, model
    if not rest.strip():
        raise InvalidInputError(f"model_name {model!r} names backend {prefix!r} but no model: use '{prefix}:MODEL'.")
    if model_source >= backend_source:
        if backend is not None and prefix != backend:
            raise InvalidInputError(f"backend={backend!r} contradicts model_name={model!r}: pass one or the other.")
        return prefix, rest
    return chosen, rest if prefix == chosen else None


def _prompt_messages(prompt: object) -> tuple[Message, ...]:
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidInputError("prompt is empty: pass the text to send to the model.")
    return ({"role": "user", "content": prompt},)


def _copy_messages(messages: object) -> tuple[Message, ...]:
    """Validate and copy the caller's messages; the caller's objects are never touched."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidInputError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    if not messages:
        raise InvalidInputError("messages is empty: pass at least one message.")
    copied: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}."
            )
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise InvalidInputError(f"messages[{i}] has no {' or '.join(repr(k) for k in missing)}.")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise InvalidInputError(
                f"messages[{i}] has unsupported key(s) {', '.join(map(repr, extra))}: chatplug sends text "
                "messages with only 'role' and 'content'."
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise InvalidInputError(f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise InvalidInputError(
                f"messages[{i}] content must be a string (text only), got {type(content).__name__}."
            )
        copied.append({"role": role, "content": content})
    return tuple(copied)


def _check_temperature(value: object) -> None:
    # numbers.Real covers int, float, Fraction and numpy's floats; Decimal is a Number but no Complex.
    real = isinstance(value, numbers.Real) or (
        isinstance(value, numbers.Number) and not isinstance(value, numbers.Complex)
    )
    if real and not isinstance(value, bool):
        try:
            number = float(value)  # type: ignore[arg-type]  # a Real or a Decimal: both convert
        except (OverflowError, ValueError):
            number = math.inf
        if math.isfinite(number) and 0 <= number <= 2:
            return
    raise InvalidInputError(f"temperature must be a number from 0 to 2, got {value!r}.")


def _check_max_tokens(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"max_tokens must be a whole number of at least 1, got {value!r}.")


def _check_options(options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        if key in RESERVED:
            raise InvalidInputError(f"option {key!r} is chatplug's own: {RESERVED[key]}.")
        try:  # every provider takes options as JSON: catch what cannot be sent before sending
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"option {key!r} must be JSON data (str, number, bool, None, list, dict), got {value!r}."
            ) from None


# -- results -----------------------------------------------------------------------------


def _succeeded(result: ChatResult, request: ChatRequest, start: float) -> LLMResponse:
    problem = _malformed(result)
    if problem is not None:
        return _failed(PluginError(f"{registry.describe(request.backend)} returned {problem}"), request, start)
    response = LLMResponse(
        content=result.content,
        tokens_used=result.prompt_tokens + result.completion_tokens,
        response_time=time.perf_counter() - start,
        model_used=result.model or request.model,
        success=True,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        backend=request.backend,
    )
    registry.notify("on_response", request=request, response=response)
    return response


def _malformed(result: object) -> str | None:
    """What is wrong with a backend's return value, or ``None`` for a usable ``ChatResult``."""
    if not isinstance(result, ChatResult):
        return f"{type(result).__name__}, not a chatplug.ChatResult."
    if not isinstance(result.content, str):
        return f"a ChatResult whose content is {type(result.content).__name__}, not str."
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(result, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"a ChatResult whose {name} is {value!r}, not a whole number >= 0."
    for name in ("model", "finish_reason"):
        value = getattr(result, name)
        if value is not None and not isinstance(value, str):
            return f"a ChatResult whose {name} is {value!r}, not a str."
    return None


def _failed(exc: Exception, request: ChatRequest | None, start: float, model_name: object = None) -> LLMResponse:
    if not isinstance(exc, ChatplugError):
        # Anything else escaped a backend: a bug in it, reported as such, never raised.
        where = registry.describe(request.backend) if request else "chatplug"
        exc = PluginError(f"{where} raised {type(exc).__name__}: {exc}")
    if exc.backend is None and request is not None:
        exc.backend = request.backend
    response = LLMResponse(
        content="",
        tokens_used=0,
        response_time=time.perf_counter() - start,
        model_used=request.model if request else model_name if isinstance(model_name, str) else "",
        success=False,
        error=str(exc),
        backend=request.backend if request else exc.backend,
        error_kind=exc.kind,
        retry_after=exc.retry_after,
        exception=exc,
    )
    logger.warning("chat completion failed (%s): %s", exc.kind.value, response.error)
    registry.notify("on_response", request=request, response=response)
    return response
