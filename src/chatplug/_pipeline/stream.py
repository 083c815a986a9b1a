"""Streamed calls: ``Stream`` (an iterator and a context manager) and ``AsyncStream`` (their
async twins). A stream takes the same way as a whole call (``attempts``): its attempt opens the
backend's stream and reads it up to the first text (``open_sync`` / ``open_async``), so a failure
before anything reached the caller is retried, or falls back, like any other; then the rest is
read, and added up into the response.

Nothing is sent until the iteration starts. Whatever happens, the iteration ends without raising
a provider failure, and ``stream.response`` holds the whole reply: a failure keeps the text and
the token counts that had arrived; a stream closed early (leaving the ``with`` block,
``close()``, a cancelled task, or dropped unclosed) closes the HTTP response at once and gets
``finish_reason="cancelled"``. A ``break`` closes nothing: the stream is its own iterator, and
the next ``for`` goes on where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Coroutine, Generator, Iterable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core.checks import thaw
from .._core.chunks import ChatChunk, whole_chunk
from .._core.exceptions import PluginError
from .._core.values import CANCELLED, ChatRequest, ChatResult, LLMResponse
from .._plugins import plugins
from .arguments import CallArguments
from .attempts import (
    attempts_async,
    attempts_sync,
    begin_async,
    begin_sync,
    end_async,
    end_sync,
    failure,
    stream_within,
    success,
    target_async,
    target_sync,
    within,
)
from .call import Call

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._core.backend import ChatBackend
    from .._core.tools import ToolCallDelta
    from .._plugins.manager import Plugins


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
        self.reasoning_tokens: int | None = None
        self.finish_reason: str | None = None
        self.first_token: float | None = None
        self.tool_calls: list[ToolCallDelta] = []
        self.thinking_blocks: list[Mapping[str, Any]] = []
        self.citations: tuple[str, ...] = ()

    def add(self, chunk: object, describe: str) -> bool:
        """Take ``chunk`` in; whether it carries text or reasoning for the caller."""
        if not isinstance(chunk, ChatChunk):
            raise PluginError(f"{describe} streamed a {type(chunk).__name__}, not a chatplug.ChatChunk.")
        text, reasoning = chunk.text, chunk.reasoning
        if not isinstance(text, str) or not isinstance(reasoning, str):
            raise PluginError(f"{describe} streamed a ChatChunk whose text or reasoning is not a str.")
        if chunk.model is not None:
            self.model = chunk.model
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens
        if chunk.reasoning_tokens is not None:
            self.reasoning_tokens = chunk.reasoning_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.tool_calls:
            self.tool_calls.extend(chunk.tool_calls)
        if chunk.thinking_blocks:
            self.thinking_blocks.extend(chunk.thinking_blocks)
        if chunk.citations:
            self.citations = chunk.citations
        if not (text or reasoning):
            return False
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
            thinking_blocks=tuple(self.thinking_blocks),
            citations=self.citations,
            reasoning_tokens=self.reasoning_tokens,
        )

    def response(
        self, manager: Plugins, call: Call | None, error: Exception | None, stopped: bool, arguments: CallArguments
    ) -> LLMResponse:
        """The stream's ``LLMResponse``: a failure keeps what had arrived."""
        if error is None and call is not None and call.request is not None:
            response = success(manager, call, self.result(call.request, CANCELLED if stopped else None), self.start)
        else:
            response = failure(manager, call, error or Exception(), self.start, arguments.model_name)
            response.content = self.text.getvalue()  # the text that arrived is kept
            if self.model is not None:  # and the model the provider said it is
                response.model_used = self.model
            response.reasoning = self.reasoning.getvalue()
            response.thinking_blocks = [thaw(block) for block in self.thinking_blocks]
            # So are the counts (Anthropic's message_start gives the input's before any text).
            prompt, completion = self.prompt_tokens, self.completion_tokens
            response.usage_reported = prompt is not None or completion is not None
            response.prompt_tokens, response.completion_tokens = prompt or 0, completion or 0
            response.tokens_used = response.prompt_tokens + response.completion_tokens
            response.reasoning_tokens = self.reasoning_tokens or 0
        response.time_to_first_token = self.first_token
        return response


class _Run:
    """A stream's call, kept apart from the stream object: its arguments, what its latest attempt
    collected, and the response it ends with. The stream's generator refers to this, never to the
    stream, so a stream dropped unclosed is freed with its last reference, its generator with it,
    and CPython closes a generator as its last reference goes (the HTTP response closed, the
    response "cancelled", the observers told): no ``__del__``, no wait for the cycle collector."""

    def __init__(self, arguments: CallArguments) -> None:
        self.arguments = arguments
        self.start = time.perf_counter()
        #: The chunks of the latest attempt, added up (each attempt starts afresh).
        self.collected = _Collected(self.start)
        self.response: LLMResponse | None = None


@dataclass
class _Opened:
    """A stream an attempt opened: its first chunk with text (``None``: it ended without any),
    the chunks after it, and what closes it."""

    first: ChatChunk | None
    chunks: Any  # Iterator[ChatChunk], or an AsyncIterator
    source: object  # what the backend returned: its close() or aclose() closes the HTTP response
    describe: str  # the backend and its plugin, for the errors of its chunks


def open_sync(run: _Run, manager: Plugins, chosen: ChatBackend, request: ChatRequest, seconds: float) -> _Opened:
    """A stream attempt: the backend's stream opened within the deadline, read up to its first text."""
    run.collected = collected = _Collected(run.start)
    describe = manager.backends.describe(request.backend)
    source: Iterable[ChatChunk] | None = None
    try:
        source = stream_within(chosen, request, seconds)
        chunks = iter(source)
        for chunk in chunks:
            if collected.add(chunk, describe):
                return _Opened(chunk, chunks, source, describe)
        return _Opened(None, chunks, source, describe)
    except BaseException:
        _close(source)
        raise


async def open_async(run: _Run, manager: Plugins, chosen: ChatBackend, request: ChatRequest, seconds: float) -> _Opened:
    """The async twin of ``open_sync``; the wait for the first chunk is bounded on the loop."""
    run.collected = collected = _Collected(run.start)
    describe = manager.backends.describe(request.backend)
    source: Any = None
    try:
        source = chosen.astream(request)
        if isinstance(source, Coroutine):  # an `async def` that returns its iterator
            source = await within(source, seconds, request)
        if not hasattr(source, "__aiter__"):
            raise _not_async_iterator(source, describe)
        chunks = source.__aiter__()
        try:
            chunk = await within(chunks.__anext__(), seconds, request)
            while not collected.add(chunk, describe):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return _Opened(None, chunks, source, describe)
        return _Opened(chunk, chunks, source, describe)
    except BaseException:
        await _aclose(source)
        raise


def _close(source: object) -> None:
    close = getattr(source, "close", None)  # a generator's closes the HTTP response
    if close is not None:
        close()


async def _aclose(source: object) -> None:
    aclose = getattr(source, "aclose", None)  # an async generator's closes the HTTP response
    if aclose is not None:
        await aclose()


class _StreamBase:
    """What the sync and async streams share: the call, the final response and how it is read."""

    def __init__(self, arguments: CallArguments) -> None:
        self._run = _Run(arguments)

    @property
    def response(self) -> LLMResponse:
        """The whole reply, once the iteration has ended (or the stream was closed)."""
        response = self._run.response
        if response is None:
            raise RuntimeError("stream.response is set once the stream ends: iterate it to the end, or close it.")
        return response

    @property
    def done(self) -> bool:
        return self._run.response is not None


class Stream(_StreamBase):
    """A streamed reply: an iterator of ``ChatChunk``s (``.text``, ``.reasoning``) and a context
    manager. ``next(stream)`` and ``for chunk in stream`` read the same stream, each going on
    where the last stopped (a ``for`` left with ``break`` can be taken up again); at its end,
    ``stream.response`` is the whole ``LLMResponse``. Closing it (leaving its ``with`` block,
    ``close()``, or dropping it) stops it: the HTTP response closed, ``finish_reason="cancelled"``."""

    def __init__(self, arguments: CallArguments) -> None:
        super().__init__(arguments)
        self._chunks: Generator[ChatChunk, None, None] | None = None  # made by the first next()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> ChatChunk:
        if self._chunks is None:
            if self._run.response is not None:  # closed before it was read
                raise StopIteration
            self._chunks = _chunks(self._run)
        return next(self._chunks)

    def close(self) -> None:
        """Stop the stream: the HTTP response is closed at once. Safe to call twice. A stream
        closed unread sends nothing; its input is checked all the same (see ``_unread``)."""
        if self._chunks is not None:
            self._chunks.close()  # GeneratorExit where it waits: "cancelled", unless it had ended
        if self._run.response is None:
            self._run.response = _unread(self._run)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _chunks(run: _Run) -> Generator[ChatChunk, None, None]:
    """The chunks of a sync stream; its response is left in ``run``."""
    manager = plugins()
    call: Call | None = None
    error: Exception | None = None
    stopped = False
    try:
        call = begin_sync(manager, run.arguments)
        opened = attempts_sync(manager, call, partial(open_sync, run, manager))
        if opened is None:  # answered from the cache: the whole reply as one chunk, nothing sent
            assert call.hit is not None
            chunk = whole_chunk(call.hit)
            if run.collected.add(chunk, "the response cache"):
                yield chunk
            return
        try:
            if opened.first is not None:
                yield opened.first
            for chunk in opened.chunks:
                if run.collected.add(chunk, opened.describe):
                    yield chunk
        finally:
            _close(opened.source)
    except (GeneratorExit, KeyboardInterrupt):
        stopped = True
        raise
    except Exception as exc:
        error = exc
    finally:
        response = run.collected.response(manager, call, error, stopped, run.arguments)
        run.response = end_sync(manager, call, response)


class AsyncStream(_StreamBase):
    """The async twin of ``Stream``, an async iterator: ``async with ... as stream: async for
    chunk in stream``, or ``await anext(stream)``. Dropped unclosed, it is closed by its event
    loop (asyncio finalises an async generator on the loop), not at once: close it."""

    def __init__(self, arguments: CallArguments) -> None:
        super().__init__(arguments)
        self._chunks: AsyncGenerator[ChatChunk, None] | None = None  # made by the first __anext__

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> ChatChunk:
        if self._chunks is None:
            if self._run.response is not None:  # closed before it was read
                raise StopAsyncIteration
            self._chunks = _achunks(self._run)
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the stream: the HTTP response is closed at once. Safe to call twice. A stream
        closed unread sends nothing; its input is checked all the same (see ``_unread``)."""
        if self._chunks is not None:
            await self._chunks.aclose()
        if self._run.response is None:
            self._run.response = await _aunread(self._run)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _achunks(run: _Run) -> AsyncGenerator[ChatChunk, None]:
    """The chunks of an async stream; its response is left in ``run``."""
    manager = plugins()
    call: Call | None = None
    error: Exception | None = None
    stopped = False
    try:
        call = await begin_async(manager, run.arguments)
        opened = await attempts_async(manager, call, partial(open_async, run, manager))
        if opened is None:  # answered from the cache: the whole reply as one chunk, nothing sent
            assert call.hit is not None
            chunk = whole_chunk(call.hit)
            if run.collected.add(chunk, "the response cache"):
                yield chunk
            return
        try:
            if opened.first is not None:
                yield opened.first
            async for chunk in opened.chunks:
                if run.collected.add(chunk, opened.describe):
                    yield chunk
        finally:
            await _aclose(opened.source)
    except (GeneratorExit, KeyboardInterrupt):
        stopped = True
        raise
    except Exception as exc:
        error = exc
    except BaseException:  # asyncio.CancelledError: the caller's task was cancelled
        stopped = True
        raise
    finally:
        response = run.collected.response(manager, call, error, stopped, run.arguments)
        run.response = await end_async(manager, call, response, cancelled=stopped)


def _not_async_iterator(source: object, describe: str) -> PluginError:
    return PluginError(
        f"{describe}: astream() returned a {type(source).__name__}, not an async iterator. Make it an async "
        "generator (`async def` with `yield`), or a `def` or `async def` returning an async iterator."
    )


# -- a stream closed before it was read ---------------------------------------------------------
#
# Nothing is sent, and neither the cache, the rate limit nor the observers are asked: the call is
# only checked, as its first step would check it (the arguments, the backend, the request built
# for it), so that bad input is reported as reading the stream would have reported it. A valid
# call ends "cancelled" and is not observed: nothing happened.


def _unread(run: _Run) -> LLMResponse:
    """The response of a sync stream closed before it was read (see above)."""
    manager = plugins()
    try:
        call = begin_sync(manager, run.arguments)
        call.build_request(target_sync(manager, call))
    except Exception as exc:
        return _refused(manager, run, exc)
    return _cancelled_before_start()


async def _aunread(run: _Run) -> LLMResponse:
    """``_unread`` without blocking the loop: plugins loaded and a backend made in a worker thread."""
    manager = plugins()
    try:
        call = await begin_async(manager, run.arguments)
        call.build_request(await target_async(manager, call))
    except Exception as exc:
        return _refused(manager, run, exc)
    return _cancelled_before_start()


def _refused(manager: Plugins, run: _Run, error: Exception) -> LLMResponse:
    """The failure of a call refused before anything was sent, observed as when read."""
    response = _Collected(time.perf_counter()).response(manager, None, error, False, run.arguments)
    manager.on_response(None, response)
    return response


def _cancelled_before_start() -> LLMResponse:
    return LLMResponse(
        content="", tokens_used=0, response_time=0.0, model_used="", success=True, finish_reason=CANCELLED
    )
