"""Streamed calls through the pipeline, on the ``testing`` backend and on a plugin that never
heard of streaming: the stream objects, the final response, faults, early stops, observers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import chatplug
from chatplug import (
    AsyncStream,
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ChatResult,
    ErrorKind,
    LLMResponse,
    Stream,
    hookimpl,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)
from chatplug.testing import scripted

from .childproc import fake_distribution, python
from .conftest import registered


def collect_sync(stream: Stream) -> list[ChatChunk]:
    with stream:
        return list(stream)


def collect_async(stream: AsyncStream) -> list[ChatChunk]:
    async def run() -> list[ChatChunk]:
        async with stream:
            return [chunk async for chunk in stream]

    return asyncio.run(run())


BOTH = pytest.mark.parametrize(
    ("start", "collect"),
    [(stream_completion_sync, collect_sync), (stream_completion_async, collect_async)],
    ids=["sync", "async"],
)


@BOTH
def test_chunks_then_the_whole_response(start: Callable[..., Any], collect: Callable[..., list[ChatChunk]]) -> None:
    with scripted([ChatChunk(reasoning="Thinking... "), "Hel", "lo", ChatChunk("!", model="fake-9")]):
        stream = start("Hi", temperature=0)
        chunks = collect(stream)
    assert [(c.text, c.reasoning) for c in chunks] == [("", "Thinking... "), ("Hel", ""), ("lo", ""), ("!", "")]
    response = stream.response
    assert response.success and response.content == "Hello!" and response.reasoning == "Thinking... "
    assert (response.model_used, response.backend, response.finish_reason) == ("fake-9", "testing", "stop")
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (1, 3, 4)
    assert response.usage_reported
    assert response.time_to_first_token is not None and 0 <= response.time_to_first_token <= response.response_time


@BOTH
def test_a_fault_mid_stream_ends_the_iteration_and_keeps_the_text(
    start: Callable[..., Any], collect: Callable[..., list[ChatChunk]]
) -> None:
    with scripted(["Hel", "lo", chatplug.OverloadedError("overloaded_error", retry_after=2)]):
        stream = start("Hi")
        chunks = collect(stream)
    assert [c.text for c in chunks] == ["Hel", "lo"]
    response = stream.response
    assert not response.success and response.error_kind is ErrorKind.OVERLOADED and response.retry_after == 2
    assert response.content == "Hello" and "overloaded_error" in (response.error or "")
    with pytest.raises(chatplug.OverloadedError):
        response.raise_for_error()


@BOTH
def test_bad_input_yields_nothing_and_sends_nothing(
    start: Callable[..., Any], collect: Callable[..., list[ChatChunk]]
) -> None:
    with scripted() as fake:
        for bad in (start(""), start("Hi", temperature=5), start("Hi", stream=True), start("Hi", backend="nope")):
            assert collect(bad) == []
            assert not bad.response.success
            assert bad.response.error_kind in (ErrorKind.INVALID_INPUT, ErrorKind.CONFIG)
    assert fake.requests == []


def test_messages_streams_take_the_same_arguments() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with scripted(["a"], ["b"]) as fake:
        assert [c.text for c in collect_sync(stream_completion_with_messages_sync(messages, "m", 0.2, 9))] == ["a"]
        assert [c.text for c in collect_async(stream_completion_with_messages_async(messages, "m", 0.2, 9))] == ["b"]
    assert [(r.model, r.temperature, r.max_tokens) for r in fake.requests] == [("m", 0.2, 9)] * 2
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_a_break_pauses_the_stream_and_closing_stops_the_backend_at_once() -> None:
    closed: list[str] = []

    def endless(request: ChatRequest) -> Iterator[ChatChunk]:
        try:
            while True:
                yield ChatChunk("tick ")
        finally:
            closed.append("closed")

    with scripted(lambda request: ["x"]):
        stream = stream_completion_sync("Hi")
        backend = chatplug._plugins.plugins().backends.get("testing")
        original = backend.stream
        backend.stream = endless  # type: ignore[method-assign]  # an endless stream, for this test only
        try:
            for count, _ in enumerate(stream):
                if count == 2:
                    break
            assert closed == [] and not stream.done  # a break closes nothing: the stream is its own iterator
            assert next(stream).text == "tick "
            stream.close()
        finally:
            backend.stream = original  # type: ignore[method-assign]
    assert closed == ["closed"]  # close() closed the backend's generator
    assert stream.response.success and stream.response.finish_reason == "cancelled"
    assert stream.response.content == "tick tick tick tick "


def test_an_unstarted_stream_sends_nothing() -> None:
    with scripted() as fake, stream_completion_sync("Hi") as stream:
        pass
    assert fake.requests == [] and stream.response.finish_reason == "cancelled"
    unread = stream_completion_sync("Hi")
    with pytest.raises(RuntimeError, match="iterate it to the end"):
        _ = unread.response


def test_cancelling_the_task_closes_the_stream_and_propagates() -> None:
    closed = asyncio.Event()

    class Slow(ChatBackend):
        default_model = "slow-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def astream(self, request: ChatRequest) -> Any:
            try:
                yield ChatChunk("first ")
                await asyncio.Event().wait()  # never set: waits until cancelled
            finally:
                closed.set()

    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("slow", Slow)

    name = chatplug.register_plugin(Plugin(), "slow-plugin")
    stream = stream_completion_async("Hi", backend="slow")
    got: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            got.append(chunk.text)
            first.set()

    async def main() -> None:
        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()

    try:
        asyncio.run(main())
    finally:
        chatplug.unregister_plugin(name)
    assert stream.response.finish_reason == "cancelled" and stream.response.content == "first "


def test_a_plugin_without_streaming_streams_its_whole_reply_as_one_chunk() -> None:
    class Whole(ChatBackend):
        default_model = "whole-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            return ChatResult("all at once", request.model, 2, 3, "end_turn")

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            return self.complete(request)

    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("whole", Whole)

    name = chatplug.register_plugin(Plugin(), "whole-plugin")
    try:
        for stream, collect in (
            (stream_completion_sync("Hi", backend="whole"), collect_sync),
            (stream_completion_async("Hi", backend="whole"), collect_async),
        ):
            assert [c.text for c in collect(stream)] == ["all at once"]  # type: ignore[operator]
            assert (stream.response.content, stream.response.tokens_used) == ("all at once", 5)
            assert stream.response.finish_reason == "stop"
    finally:
        chatplug.unregister_plugin(name)


def test_a_plugin_without_streaming_streams_the_tool_calls_of_its_whole_reply() -> None:
    class Calling(ChatBackend):
        default_model = "calling-1"
        capabilities = frozenset({"tools"})

        def complete(self, request: ChatRequest) -> ChatResult:
            call = chatplug.ToolCallDelta(index=0, id="call_0", name="weather", arguments='{"city": "Oslo"}')
            return ChatResult("", request.model, 2, 3, "tool_use", tool_calls=(call,))

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            return self.complete(request)

    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("calling", Calling)

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    name = chatplug.register_plugin(Plugin(), "calling-plugin")
    try:
        for stream, collect in (
            (stream_completion_sync("Weather?", backend="calling", tools=[weather]), collect_sync),
            (stream_completion_async("Weather?", backend="calling", tools=[weather]), collect_async),
        ):
            collect(stream)  # type: ignore[operator]
            response = stream.response
            assert response.success and response.finish_reason == "tool_calls", response.error
            calls = [(c.id, c.name, c.arguments) for c in response.tool_calls]
            assert calls == [("call_0", "weather", {"city": "Oslo"})]
    finally:
        chatplug.unregister_plugin(name)


def test_observers_see_each_stream_once_with_its_final_response() -> None:
    seen: list[tuple[str, object]] = []

    class Observer:
        @hookimpl
        def on_request(self, request: ChatRequest) -> None:
            seen.append(("request", request.backend))

        @hookimpl
        def on_response(self, request: ChatRequest | None, response: LLMResponse) -> None:
            seen.append(("response", response.content))

    name = chatplug.register_plugin(Observer(), "stream-observer")
    try:
        with scripted(["a", "b"], ["c", chatplug.ServerError("x")]):
            collect_sync(stream_completion_sync("Hi"))
            collect_async(stream_completion_async("Hi"))
            collect_sync(stream_completion_sync(""))
    finally:
        chatplug.unregister_plugin(name)
    assert seen == [
        ("request", "testing"),
        ("response", "ab"),
        ("request", "testing"),
        ("response", "c"),
        ("response", ""),  # bad input: no request, one response
    ]


def test_a_plugin_streaming_garbage_is_its_failure() -> None:
    with scripted(lambda request: [ChatChunk(text=None)]):  # type: ignore[arg-type]
        stream = stream_completion_sync("Hi")
        collect_sync(stream)
    assert stream.response.error_kind is ErrorKind.PLUGIN and "testing" in (stream.response.error or "")


def test_a_stream_is_iterated_once() -> None:
    with scripted(["a"]):
        stream = stream_completion_sync("Hi")
        assert [c.text for c in stream] == ["a"]
        assert list(stream) == []
        assert stream.response.content == "a"


# -- plugins may stream plainly: any iterator, any async iterator (issue 24) ----------------------

PLAIN_STREAMS = '''
from chatplug import ChatBackend, ChatChunk, hookimpl


def chunks():
    last = ChatChunk("lo", model="plain-9", prompt_tokens=2, completion_tokens=3, finish_reason="stop")
    return [ChatChunk("Hel"), last]


class Chunks:
    """An async iterator object: neither an async generator nor closable."""

    def __init__(self, items):
        self._items = iter(items)

    def __aiter__(self):
        return self

    async def __anext__(self):
        for item in self._items:
            return item
        raise StopAsyncIteration


class Plain(ChatBackend):
    default_model = "plain-1"

    def complete(self, request):
        raise NotImplementedError

    async def acomplete(self, request):
        raise NotImplementedError

    def stream(self, request):
        return iter(chunks())

    def astream(self, request):
        return Chunks(chunks())


@hookimpl
def register_backends(register):
    register("plain", Plain)
'''

READ_PLAIN = """
import asyncio, json, chatplug

def row(stream, texts):
    r = stream.response
    return [texts, r.success, r.error, r.content, r.model_used, r.tokens_used, r.finish_reason]

with chatplug.stream_completion_sync("hi", backend="plain") as stream:
    rows = [row(stream, [chunk.text for chunk in stream])]

async def main():
    messages = [{"role": "user", "content": "hi"}]
    async with chatplug.stream_completion_with_messages_async(messages, backend="plain") as stream:
        return row(stream, [chunk.text async for chunk in stream])

rows.append(asyncio.run(main()))
print(json.dumps(rows))
"""


def test_an_installed_plugin_may_stream_a_plain_iterator_and_async_iterator(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "chatplug-plain", "plain", PLAIN_STREAMS)
    proc = python(READ_PLAIN, tmp_path)
    assert proc.returncode == 0, proc.stderr
    whole = [["Hel", "lo"], True, None, "Hello", "plain-9", 5, "stop"]
    assert json.loads(proc.stdout) == [whole, whole]


def test_a_plain_iterator_with_close_is_closed_when_the_stream_is() -> None:
    closed: list[str] = []

    class Ticks:
        def __iter__(self) -> Ticks:
            return self

        def __next__(self) -> ChatChunk:
            return ChatChunk("tick ")

        def close(self) -> None:
            closed.append("close")

    class Tocks:
        def __aiter__(self) -> Tocks:
            return self

        async def __anext__(self) -> ChatChunk:
            return ChatChunk("tock ")

        async def aclose(self) -> None:
            closed.append("aclose")

    class Endless(ChatBackend):
        default_model = "endless-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
            return Ticks()

        def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
            return Tocks()

    async def read_async() -> LLMResponse:
        async with stream_completion_async("Hi", backend="endless") as stream:
            assert [(await anext(stream)).text for _ in range(2)] == ["tock "] * 2
        return stream.response

    with registered("endless", Endless):
        with stream_completion_sync("Hi", backend="endless") as stream:
            assert [next(stream).text for _ in range(2)] == ["tick "] * 2
        responses = [stream.response, asyncio.run(read_async())]
    assert closed == ["close", "aclose"]
    assert [(r.success, r.finish_reason, r.content) for r in responses] == [
        (True, "cancelled", "tick tick "),
        (True, "cancelled", "tock tock "),
    ]


def test_a_plain_stream_that_fails_at_once_is_retried() -> None:
    """A plain function sends when called, and may fail then, before any iterator exists: the
    attempt is retried as a generator's first-chunk failure is."""
    calls: list[str] = []

    class Flaky(ChatBackend):
        default_model = "flaky-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
            calls.append("stream")
            if calls.count("stream") == 1:
                raise chatplug.OverloadedError("busy", retry_after=0)
            return iter([ChatChunk("ok", finish_reason="stop")])

        def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:  # type: ignore[override]
            calls.append("astream")
            if calls.count("astream") == 1:
                raise chatplug.OverloadedError("busy", retry_after=0)
            return _aiter([ChatChunk("ok", finish_reason="stop")])

    with registered("flaky", Flaky):
        responses = [
            collect_and_respond(stream_completion_sync("Hi", backend="flaky", max_retries=1)),
            collect_and_respond(stream_completion_async("Hi", backend="flaky", max_retries=1)),
        ]
    for response in responses:
        assert (response.success, response.content, response.attempts) == (True, "ok", 2), response.error
    assert calls == ["stream", "stream", "astream", "astream"]


def test_an_astream_that_returns_its_iterator_from_an_async_def_is_awaited() -> None:
    """``return await client.create(stream=True)``: the natural override of ``async def astream``."""

    class Returning(ChatBackend):
        default_model = "returning-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def astream(self, request: ChatRequest) -> Any:  # returns an iterator: a coroutine, then
            return _aiter([ChatChunk("one"), ChatChunk(" two")])

    class Wrong(Returning):
        async def astream(self, request: ChatRequest) -> Any:
            return [ChatChunk("a list")]

    with registered("returning", Returning):
        response = collect_and_respond(stream_completion_async("Hi", backend="returning"))
    assert response.success and response.content == "one two", response.error
    with registered("wrong", Wrong):
        response = collect_and_respond(stream_completion_async("Hi", backend="wrong"))
    assert response.error_kind is ErrorKind.PLUGIN
    assert "astream() returned a list, not an async iterator" in (response.error or "")
    assert "backend 'wrong'" in (response.error or "")


def test_a_retried_stream_keeps_only_its_last_attempts_tool_calls() -> None:
    """Tool-call pieces reach no caller, so a stream failing after some is retried: the pieces of
    the failed attempt are not joined to the next one's."""
    first = chatplug.ToolCallDelta(index=0, id="call_0", name="weather", arguments='{"ci')
    second = chatplug.ToolCallDelta(index=0, id="call_1", name="weather", arguments='{"city": "Oslo"}')

    def weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    script = [ChatChunk(tool_calls=(first,)), chatplug.OverloadedError("busy", retry_after=0)]
    with scripted(script, [ChatChunk(tool_calls=(second,))], retries=1):
        response = collect_and_respond(stream_completion_sync("Weather?", tools=[weather]))
    assert response.success and response.attempts == 2, response.error
    assert [(c.id, c.arguments) for c in response.tool_calls] == [("call_1", {"city": "Oslo"})]


def collect_and_respond(stream: Stream | AsyncStream) -> LLMResponse:
    (collect_sync if isinstance(stream, Stream) else collect_async)(stream)  # type: ignore[operator]
    return stream.response


async def _aiter(items: list[ChatChunk]) -> AsyncIterator[ChatChunk]:
    for item in items:
        yield item
