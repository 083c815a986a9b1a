"""The public functions: whole replies and streamed ones, sync and async twins side by side.
Each hands its arguments to the dispatcher (``_dispatch``), which does everything else, once
for all backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._core.values import LLMResponse
from .dispatch import call_async, call_sync
from .validate import checked_messages, prompt_messages

if TYPE_CHECKING:
    from .stream import AsyncStream, Stream


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
    return call_sync(prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)


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
    return await call_async(prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)


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
    return call_sync(checked_messages, messages, model_name, temperature, max_tokens, backend, options)


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
    return await call_async(checked_messages, messages, model_name, temperature, max_tokens, backend, options)


def stream_completion_sync(
    prompt: str,
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> Stream:
    """Stream the completion of ``prompt``: ``with stream_completion_sync(...) as stream:
    for chunk in stream: print(chunk.text, end="")``, then ``stream.response``. Never raises
    for provider or transport failures, before or during the stream."""
    arguments = (prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)
    from .stream import Stream  # on first use: a program that never streams does not pay

    return Stream(arguments)


def stream_completion_with_messages_sync(
    messages: Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> Stream:
    """Stream the next assistant message after ``messages``; see ``stream_completion_sync``."""
    arguments = (checked_messages, messages, model_name, temperature, max_tokens, backend, options)
    from .stream import Stream  # on first use: a program that never streams does not pay

    return Stream(arguments)


def stream_completion_async(
    prompt: str,
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> AsyncStream:
    """Async twin of ``stream_completion_sync`` (not a coroutine): ``async with
    stream_completion_async(...) as stream: async for chunk in stream: ...``."""
    arguments = (prompt_messages, prompt, model_name, temperature, max_tokens, backend, options)
    from .stream import AsyncStream  # on first use: a program that never streams does not pay

    return AsyncStream(arguments)


def stream_completion_with_messages_async(
    messages: Sequence[Mapping[str, Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    **options: Any,
) -> AsyncStream:
    """Async twin of ``stream_completion_with_messages_sync``."""
    arguments = (checked_messages, messages, model_name, temperature, max_tokens, backend, options)
    from .stream import AsyncStream  # on first use: a program that never streams does not pay

    return AsyncStream(arguments)
