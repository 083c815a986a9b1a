"""The public functions: whole replies and streamed ones, sync and async twins side by side.
Each hands what it was given to the pipeline as a ``CallArguments`` (``arguments``), and the
pipeline does everything else, once for all backends: ``attempts`` for whole replies, ``stream``
for streamed ones. Both are imported on the first call: ``import chatplug`` stays near the cost
of importing ``logging`` (they import asyncio and the rest of the pipeline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._core.values import LLMResponse
from .arguments import CallArguments

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
    from .attempts import call_sync

    return call_sync(
        CallArguments(
            prompt=prompt,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .attempts import call_async

    return await call_async(
        CallArguments(
            prompt=prompt,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .attempts import call_sync

    return call_sync(
        CallArguments(
            messages=messages,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .attempts import call_async

    return await call_async(
        CallArguments(
            messages=messages,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .stream import Stream

    return Stream(
        CallArguments(
            prompt=prompt,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .stream import Stream

    return Stream(
        CallArguments(
            messages=messages,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .stream import AsyncStream

    return AsyncStream(
        CallArguments(
            prompt=prompt,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )


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
    from .stream import AsyncStream

    return AsyncStream(
        CallArguments(
            messages=messages,
            model_name=model_name,
            temperature=temperature,
            max_tokens=max_tokens,
            backend=backend,
            options=options,
        )
    )
