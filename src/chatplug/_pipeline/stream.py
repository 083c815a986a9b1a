"""Streamed calls: ``Stream`` (an iterator and a context manager) and ``AsyncStream`` (their
async twins). Both take the same way through the dispatcher as a whole call (``begin_sync`` /
``begin_async``, the observers, ``_response``) and differ from it only in calling the backend's
``stream`` and adding the chunks up.

Nothing is sent until the iteration starts. Whatever happens, the iteration ends without raising
a provider failure, and ``stream.response`` holds the whole reply: a failure keeps the text and
the token counts that had arrived; a stream closed early (leaving the ``with`` block,
``close()``, a cancelled task, or dropped unclosed) closes the HTTP response at once and gets
``finish_reason="cancelled"``. A ``break`` closes nothing: the stream is its own iterator, and
the next ``for`` goes on where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core.exceptions import PluginError
from .._core.values import ChatRequest, ChatResult, LLMResponse, thaw
from .response import as_chatplug_error, failed, succeeded

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._core.tools import ToolCallDelta
    from .._plugins.manager import Plugins
    from .dispatch import Call


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
    #: Whole thinking blocks of the provider's, each as it sent it (see ``ChatResult``), once the
    #: block is complete (its text streams as ``reasoning`` meanwhile); the dispatcher keeps them.
    thinking_blocks: tuple[Mapping[str, Any], ...] = ()


#: The finish reason of a stream its caller stopped.
CANCELLED = "cancelled"


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
        self.thinking_blocks: list[Mapping[str, Any]] = []
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
        if chunk.thinking_blocks:
            self.thinking_blocks.extend(chunk.thinking_blocks)
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
            thinking_blocks=tuple(self.thinking_blocks),
        )

    def response(
        self, manager: Plugins, request: ChatRequest | None, error: Exception | None, stopped: bool, model: object
    ) -> LLMResponse:
        if error is None and request is not None:
            result = self.result(request, CANCELLED if stopped else None)
            response = succeeded(result, request, self.start, manager.backends.describe)
        else:
            from .dispatch import where

            chatplug_error = as_chatplug_error(
                error if isinstance(error, Exception) else Exception(), where(manager, request)
            )
            response = failed(chatplug_error, request, self.start, model)
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
        response.time_to_first_token = self.first_token
        return response


class _Run:
    """A stream's call, kept apart from the stream object: its arguments and the response it
    ends with. The stream's generator refers to this, never to the stream, so a stream dropped
    unclosed is freed with its last reference, its generator with it, and CPython closes a
    generator as its last reference goes (the HTTP response closed, the response "cancelled",
    the observers told): no ``__del__``, no wait for the cycle collector."""

    __slots__ = ("arguments", "response")

    def __init__(self, arguments: tuple[Any, ...]) -> None:
        #: The dispatcher's arguments of the call, as ``begin_sync`` takes them.
        self.arguments = arguments
        self.response: LLMResponse | None = None

    @property
    def model_name(self) -> object:
        return self.arguments[2]


class _StreamBase:
    """What the sync and async streams share: the call, the final response and how it is read."""

    def __init__(self, arguments: tuple[Any, ...]) -> None:
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

    def __init__(self, arguments: tuple[Any, ...]) -> None:
        super().__init__(arguments)
        self._chunks: Generator[ChatChunk, None, None] | None = None  # made by the first next()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> ChatChunk:
        chunks = self._chunks
        if chunks is None:
            if self._run.response is not None:  # closed before it was read
                raise StopIteration
            chunks = self._chunks = _chunks(self._run)
        return next(chunks)

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
    from .dispatch import begin_sync, next_sync, plugins, stream_within

    manager = plugins()
    collected = _Collected(time.perf_counter())
    call: Call | None = None
    request: ChatRequest | None = None
    error: Exception | None = None
    stopped = False
    try:
        call, chosen, request = begin_sync(manager, *run.arguments)
        if call.hit is not None:  # answered from the cache: the whole reply as one chunk, nothing sent
            chunk = whole_chunk(call.hit)
            if collected.add(chunk, "the response cache"):
                yield chunk
        while call.hit is None:  # attempts: retried (or moved to a fallback) only before the first chunk
            describe = manager.backends.describe(request.backend)
            source: Iterator[ChatChunk] | None = None
            try:
                source = stream_within(chosen, request, call.plan)  # in the try: a plain function may send here
                for chunk in source:
                    if collected.add(chunk, describe):
                        yield chunk
                break
            except Exception as exc:
                if collected.started:
                    raise
                wait = call.failed(exc, manager, request)
                collected = _Collected(collected.start)  # the next attempt's counts and tool calls alone
            finally:
                close = getattr(source, "close", None)  # a generator's closes the HTTP response
                if close is not None:
                    close()
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
        run.response = collected.response(manager, request, error, stopped, run.model_name)
        if call is not None:
            call.finish(run.response)
            if call.cache is not None or call.ticket is not None:
                call.after(run.response)  # a whole reply stored; its real tokens counted
        manager.on_response(request, run.response)


class AsyncStream(_StreamBase):
    """The async twin of ``Stream``, an async iterator: ``async with ... as stream: async for
    chunk in stream``, or ``await anext(stream)``. Dropped unclosed, it is closed by its event
    loop (asyncio finalises an async generator on the loop), not at once: close it."""

    def __init__(self, arguments: tuple[Any, ...]) -> None:
        super().__init__(arguments)
        self._chunks: AsyncGenerator[ChatChunk, None] | None = None  # made by the first __anext__

    def __aiter__(self) -> AsyncStream:
        return self

    def __anext__(self) -> Awaitable[ChatChunk]:
        # A plain method handing on the generator's awaitable: no coroutine of its own per chunk.
        chunks = self._chunks
        if chunks is None:
            if self._run.response is not None:  # closed before it was read
                return _empty().__anext__()
            chunks = self._chunks = _achunks(self._run)
        return chunks.__anext__()

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
    import asyncio

    from .dispatch import begin_async, next_async, plugins, within

    manager = plugins()
    collected = _Collected(time.perf_counter())
    call: Call | None = None
    request: ChatRequest | None = None
    error: Exception | None = None
    stopped = False
    try:
        call, chosen, request = await begin_async(manager, *run.arguments)
        if call.hit is not None:  # answered from the cache: the whole reply as one chunk, nothing sent
            chunk = whole_chunk(call.hit)
            if collected.add(chunk, "the response cache"):
                yield chunk
        while call.hit is None:  # attempts: retried (or moved to a fallback) only before the first chunk
            describe = manager.backends.describe(request.backend)
            source: Any = None
            try:
                source = chosen.astream(request)
                if isinstance(source, Coroutine):  # an `async def` that returns its iterator
                    source = await within(source, call.plan.remaining(), request)
                if not hasattr(source, "__aiter__"):
                    raise _not_async_iterator(source, describe)
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
                collected = _Collected(collected.start)  # the next attempt's counts and tool calls alone
            finally:
                aclose = getattr(source, "aclose", None)  # an async generator's closes the HTTP response
                if aclose is not None:
                    await aclose()
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
        run.response = collected.response(manager, request, error, stopped, run.model_name)
        if call is not None:
            call.finish(run.response)
            if not stopped and (call.cache is not None or call.ticket is not None):
                await call.aafter(run.response)  # a whole reply stored; its real tokens counted
        manager.on_response(request, run.response)


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
    from .dispatch import Call, plugins, target_sync

    manager, start = plugins(), time.perf_counter()
    try:
        if not manager.loaded:
            manager.load()
        target_sync(manager, Call(manager, *run.arguments))
    except Exception as exc:
        return _refused(manager, run, exc, start)
    return _cancelled_before_start()


async def _aunread(run: _Run) -> LLMResponse:
    """``_unread`` without blocking the loop: plugins loaded and a backend made in a worker thread."""
    import asyncio

    from .dispatch import Call, plugins, target_async

    manager, start = plugins(), time.perf_counter()
    try:
        if not manager.loaded:
            await asyncio.to_thread(manager.load)
        await target_async(manager, Call(manager, *run.arguments))
    except Exception as exc:
        return _refused(manager, run, exc, start)
    return _cancelled_before_start()


def _refused(manager: Plugins, run: _Run, error: Exception, start: float) -> LLMResponse:
    """The failure of a call refused before anything was sent, observed as when read."""
    response = _Collected(start).response(manager, None, error, False, run.model_name)
    manager.on_response(None, response)
    return response


def _cancelled_before_start() -> LLMResponse:
    return LLMResponse(
        content="", tokens_used=0, response_time=0.0, model_used="", success=True, finish_reason=CANCELLED
    )


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
        thinking_blocks=result.thinking_blocks,
    )


async def _empty() -> AsyncIterator[ChatChunk]:
    return
    yield  # an async generator that yields nothing
