"""Streamed calls: ``Stream`` (an iterator and a context manager) and ``AsyncStream`` (their
async twins). Both take the same way through the dispatcher as a whole call (``begin_sync`` /
``begin_async``, the observers, ``_response``) and differ from it only in calling the backend's
``stream`` and adding the chunks up.

Nothing is sent until the iteration starts. Whatever happens, the iteration ends without raising
a provider failure, and ``stream.response`` holds the whole reply: a failure keeps the text that
had arrived; a caller that stops early (``break``, leaving the ``with`` block, ``close()``, a
cancelled task) closes the HTTP response at once and gets ``finish_reason="cancelled"``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._exceptions import PluginError
from ._response import as_chatplug_error, failed, succeeded
from ._types import ChatRequest, ChatResult, LLMResponse

if TYPE_CHECKING:
    from ._backend import ChatBackend
    from ._dispatch import Call
    from ._plugins import Plugins
    from ._tools import ToolCallDelta

# Not frozen: a stream makes one per piece of text, and a frozen dataclass costs ~2 us more to
# build (object.__setattr__ per field). Treat it as read-only all the same.
@dataclass(slots=True)
class ChatChunk:
    """A piece of a streamed reply: what a backend's ``stream`` yields, and what the caller
    iterates. ``text`` and ``reasoning`` are the new text (either may be ``""``).

    A backend also reports, on any chunk (usually the last), what it learns of the whole reply:
    ``model``, the token counts and ``finish_reason``; ``None`` means "not said here". The
    dispatcher adds up the text and keeps the last value of each of those.
    """

    text: str = ""
    reasoning: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    #: Pieces of tool calls (see ``ToolCallDelta``); the dispatcher assembles them.
    tool_calls: tuple[ToolCallDelta, ...] = ()


#: The finish reason of a stream its caller stopped.
CANCELLED = "cancelled"

Begin = Callable[["Plugins"], "tuple[Call, ChatBackend, ChatRequest]"]
AsyncBegin = Callable[["Plugins"], "Awaitable[tuple[Call, ChatBackend, ChatRequest]]"]


class _Text:
    """Text written piece by piece, kept in a few large strings: a list of every piece (or a
    ``StringIO``, which keeps one too) would cost ~50 bytes per chunk on top of the text."""

    __slots__ = ("_done", "_pieces")

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._done: list[str] = []

    def write(self, piece: str) -> None:
        self._pieces.append(piece)
        if len(self._pieces) == 256:
            self._done.append("".join(self._pieces))
            self._pieces.clear()

    def getvalue(self) -> str:
        return "".join(self._done) + "".join(self._pieces)


class _Collected:
    """The chunks of one stream, added up."""

    def __init__(self, start: float) -> None:
        self.start = start
        # A 100,000-chunk stream costs its text, not a list of its chunks.
        self.text = _Text()
        self.reasoning = _Text()
        self.model: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.first_token: float | None = None
        self.tool_calls: list[ToolCallDelta] = []
        self.started = False  # whether anything reached the caller: no retry after that

    def add(self, chunk: object, describe: str) -> bool:
        """Take ``chunk`` in; whether it carries text or reasoning for the caller. Called once
        per chunk: kept to plain attribute reads."""
        if type(chunk) is not ChatChunk and not isinstance(chunk, ChatChunk):
            raise PluginError(f"{describe} streamed a {type(chunk).__name__}, not a chatplug.ChatChunk.")
        text, reasoning = chunk.text, chunk.reasoning
        if type(text) is not str or type(reasoning) is not str:
            raise PluginError(f"{describe} streamed a ChatChunk whose text or reasoning is not a str.")
        if chunk.model is not None:
            self.model = chunk.model
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.tool_calls:
            self.tool_calls.extend(chunk.tool_calls)
        if not (text or reasoning):
            return False
        self.started = True
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.start
        if text:
            self.text.write(text)
        if reasoning:
            self.reasoning.write(reasoning)
        return True

    def result(self, request: ChatRequest, finish_reason: str | None = None) -> ChatResult:
        return ChatResult(
            content=self.text.getvalue(),
            model=self.model or request.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=finish_reason or self.finish_reason,
            reasoning=self.reasoning.getvalue(),
            tool_calls=tuple(self.tool_calls),
        )

    def response(
        self, manager: Plugins, request: ChatRequest | None, error: Exception | None, stopped: bool, model: object
    ) -> LLMResponse:
        if error is None and request is not None:
            result = self.result(request, CANCELLED if stopped else None)
            response = succeeded(result, request, self.start, manager.backends.describe)
        else:
            from ._dispatch import where

            chatplug_error = as_chatplug_error(
                error if isinstance(error, Exception) else Exception(), where(manager, request)
            )
            response = failed(chatplug_error, request, self.start, model)
            response.content = self.text.getvalue()  # the text that arrived is kept
            response.reasoning = self.reasoning.getvalue()
        response.time_to_first_token = self.first_token
        return response


class _StreamBase:
    """What the sync and async streams share: the final response and how it is read."""

    _response: LLMResponse | None = None

    def __init__(self, model_name: object) -> None:
        self._model_name = model_name

    @property
    def response(self) -> LLMResponse:
        """The whole reply, once the iteration has ended (or the stream was closed)."""
        if self._response is None:
            raise RuntimeError("stream.response is set once the stream ends: iterate it to the end, or close it.")
        return self._response

    @property
    def done(self) -> bool:
        return self._response is not None

    def _cancelled_before_start(self) -> LLMResponse:
        return LLMResponse(
            content="", tokens_used=0, response_time=0.0, model_used="", success=True, finish_reason=CANCELLED
        )


class Stream(_StreamBase):
    """A streamed reply: ``for chunk in stream`` yields ``ChatChunk``s (``.text``, ``.reasoning``);
    then ``stream.response`` is the whole ``LLMResponse``. Use it in a ``with`` block to close
    it when leaving early."""

    def __init__(self, begin: Begin, model_name: object) -> None:
        super().__init__(model_name)
        self._begin = begin
        # Weakly: a `for` loop left with `break` drops the last reference, and CPython closes the
        # generator (and with it the HTTP response) at once.
        self._iterator: weakref.ref[Generator[ChatChunk, None, None]] | None = None

    def __iter__(self) -> Iterator[ChatChunk]:
        if self._iterator is None and self._response is None:
            iterator = self._run()
            self._iterator = weakref.ref(iterator)
            return iterator
        return iter(())  # a stream is iterated once

    def _run(self) -> Generator[ChatChunk, None, None]:
        from ._dispatch import next_sync, plugins

        manager = plugins()
        collected = _Collected(time.perf_counter())
        call: Call | None = None
        request: ChatRequest | None = None
        error: Exception | None = None
        stopped = False
        try:
            call, chosen, request = self._begin(manager)
            if call.hit is not None:  # answered from the cache: the whole reply as one chunk, nothing sent
                chunk = whole_chunk(call.hit)
                if collected.add(chunk, "the response cache"):
                    yield chunk
            while call.hit is None:  # attempts: retried (or moved to a fallback) only before the first chunk
                source = chosen.stream(request)
                describe = manager.backends.describe(request.backend)
                try:
                    for chunk in source:
                        if collected.add(chunk, describe):
                            yield chunk
                    break
                except Exception as exc:
                    if collected.started:
                        raise
                    wait = call.failed(exc, manager, request)
                finally:
                    source.close()  # type: ignore[attr-defined]  # a generator: closes the HTTP response
                if wait:
                    time.sleep(wait)
                chosen, request = next_sync(manager, call)
            if call.hit is None:
                call.plan.succeeded()
        except (GeneratorExit, KeyboardInterrupt):
            stopped = True
            raise
        except Exception as exc:
            error = exc
        finally:
            self._response = collected.response(manager, request, error, stopped, self._model_name)
            if call is not None:
                call.finish(self._response)
                if call.cache is not None or call.ticket is not None:
                    call.after(self._response)  # a whole reply stored; its real tokens counted
            manager.on_response(request, self._response)

    def close(self) -> None:
        """Stop the stream: the HTTP response is closed at once. Safe to call twice."""
        iterator = self._iterator() if self._iterator is not None else None
        if iterator is not None:
            iterator.close()
        if self._response is None:  # never started: nothing was sent
            self._response = self._cancelled_before_start()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncStream(_StreamBase):
    """The async twin of ``Stream``: ``async with ... as stream: async for chunk in stream``."""

    def __init__(self, begin: AsyncBegin, model_name: object) -> None:
        super().__init__(model_name)
        self._begin = begin
        # Strongly, unlike the sync stream's: an async generator is not closed when its last
        # reference goes (the loop finalises it later), so `async with` must be able to close it.
        self._iterator: AsyncGenerator[ChatChunk, None] | None = None

    def __aiter__(self) -> AsyncIterator[ChatChunk]:
        if self._iterator is None and self._response is None:
            self._iterator = self._run()
            return self._iterator
        return _empty()

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        import asyncio

        from ._dispatch import next_async, plugins, within

        manager = plugins()
        collected = _Collected(time.perf_counter())
        call: Call | None = None
        request: ChatRequest | None = None
        error: Exception | None = None
        stopped = False
        try:
            call, chosen, request = await self._begin(manager)
            if call.hit is not None:  # answered from the cache: the whole reply as one chunk, nothing sent
                chunk = whole_chunk(call.hit)
                if collected.add(chunk, "the response cache"):
                    yield chunk
            while call.hit is None:  # attempts: retried (or moved to a fallback) only before the first chunk
                source = chosen.astream(request)
                describe = manager.backends.describe(request.backend)
                try:
                    # The wait for the first chunk is bounded by the call's deadline, on the loop.
                    pending = source.__aiter__()
                    waiting: Any = within(pending.__anext__(), call.plan.remaining(), request)
                    while True:
                        try:
                            chunk = await waiting
                        except StopAsyncIteration:
                            break
                        if collected.add(chunk, describe):
                            yield chunk
                        waiting = pending.__anext__()
                    break
                except Exception as exc:
                    if collected.started:
                        raise
                    wait = call.failed(exc, manager, request)
                finally:
                    await source.aclose()  # type: ignore[attr-defined]  # an async generator: closes the response
                if wait:
                    await asyncio.sleep(wait)
                chosen, request = await next_async(manager, call)
            if call.hit is None:
                call.plan.succeeded()
        except (GeneratorExit, KeyboardInterrupt):
            stopped = True
            raise
        except Exception as exc:
            error = exc
        except BaseException:  # asyncio.CancelledError: the caller's task was cancelled
            stopped = True
            raise
        finally:
            self._response = collected.response(manager, request, error, stopped, self._model_name)
            if call is not None:
                call.finish(self._response)
                if not stopped and (call.cache is not None or call.ticket is not None):
                    await call.aafter(self._response)  # a whole reply stored; its real tokens counted
            manager.on_response(request, self._response)

    async def aclose(self) -> None:
        """Stop the stream: the HTTP response is closed at once. Safe to call twice."""
        if self._iterator is not None:
            await self._iterator.aclose()
        if self._response is None:  # never started: nothing was sent
            self._response = self._cancelled_before_start()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def whole_chunk(result: ChatResult) -> ChatChunk:
    """A whole reply as one chunk: what a stream yields when the cache answers it, or when its
    backend has no streaming of its own (``ChatBackend.stream``'s default)."""
    return ChatChunk(
        text=result.content,
        reasoning=result.reasoning,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        tool_calls=tuple(result.tool_calls),  # type: ignore[arg-type]  # ToolCalls are assembled as deltas are
    )


async def _empty() -> AsyncIterator[ChatChunk]:
    return
    yield  # an async generator that yields nothing
