"""Streams as the caller holds them (issue 24), through the public functions against the loopback
servers: a stream is its own iterator (``next()`` and ``for`` read one stream, a ``for`` after a
``break`` goes on), it is stopped only when closed or dropped, a stream closed unread checks its
input all the same, and a stream that fails keeps the token counts the provider had sent (each
HTTP backend's recorded stream that fails midway)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from chatplug import (
    AsyncStream,
    ErrorKind,
    LLMResponse,
    Stream,
    generate_completion_sync,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .conftest import LINES, PIECES, Observed, streamed
from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI
from .test_deadline import Site, open_site

SSE = {"Content-Type": "text/event-stream; charset=utf-8"}

pytestmark = pytest.mark.usefixtures("quiet_hangups")


# -- a stream is its own iterator --------------------------------------------------------------


def test_next_then_for_read_the_same_stream(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES))
    with stream_completion_sync("Why is the sky blue?") as stream:
        assert iter(stream) is stream
        first = next(iter(stream))  # as the issue wrote it: the stream is not cancelled after it
        second = next(stream)
        rest = [chunk.text for chunk in stream]
        assert [first.text, second.text, *rest] == PIECES
        with pytest.raises(StopIteration):
            next(stream)
    response = stream.response
    assert response.success and response.finish_reason == "stop", response.error
    assert response.content == "".join(PIECES) and len(ollama.requests) == 1


def test_a_for_after_a_break_goes_on_where_it_stopped(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES))
    texts: list[str] = []
    with stream_completion_with_messages_sync([{"role": "user", "content": "Why?"}]) as stream:
        for chunk in stream:
            texts.append(chunk.text)
            if len(texts) == 2:
                break
        assert not stream.done  # a break closes nothing
        texts += [chunk.text for chunk in stream]
    assert texts == PIECES
    assert stream.response.success and stream.response.content == "".join(PIECES)


def test_async_anext_then_async_for_and_a_break_read_the_same_stream(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES))

    async def read(stream: AsyncStream) -> list[str]:
        async with stream:
            assert stream.__aiter__() is stream
            texts = [(await anext(stream)).text]
            async for chunk in stream:
                texts.append(chunk.text)
                if len(texts) == 3:
                    break
            assert not stream.done
            texts += [chunk.text async for chunk in stream]
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        return texts

    async def main() -> list[list[str]]:
        return [
            await read(stream_completion_async("Why?")),
            await read(stream_completion_with_messages_async([{"role": "user", "content": "Why?"}])),
        ]

    streams = asyncio.run(main())
    assert streams == [PIECES, PIECES]
    assert len(ollama.requests) == 2


# -- stopped only when closed or dropped --------------------------------------------------------


def test_leaving_the_with_block_after_a_break_closes_the_connection(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    with stream_completion_sync("Why?") as stream:
        for _ in stream:
            break
        assert not stream.done
    assert ollama.disconnected.wait(5)
    response = stream.response
    assert (response.success, response.finish_reason, response.content) == (True, "cancelled", "Ray")


def test_a_stream_dropped_unclosed_is_stopped_at_once(ollama: FakeServer, observed: Observed) -> None:
    """The stream holds its generator, and nothing holds the stream: dropping it frees both at
    once (no cycle for the collector to find later), which closes the HTTP response."""
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    stream = stream_completion_sync("Why?")
    first = next(stream)
    assert first.text == "Ray" and observed.responses == []
    del stream
    assert [(r.success, r.finish_reason, r.content) for r in observed.responses] == [(True, "cancelled", "Ray")]
    assert ollama.disconnected.wait(5)


def test_an_async_stream_dropped_unclosed_is_stopped_by_its_loop(ollama: FakeServer, observed: Observed) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))

    async def main() -> None:
        stream = stream_completion_async("Why?")
        first = await anext(stream)
        assert first.text == "Ray"
        del stream  # asyncio closes the generator in a task of its own
        assert await asyncio.to_thread(ollama.disconnected.wait, 5)

    asyncio.run(main())
    assert [(r.success, r.finish_reason, r.content) for r in observed.responses] == [(True, "cancelled", "Ray")]


# -- closed unread: nothing sent, the input checked all the same ----------------------------------

BAD = [
    ({"prompt": ""}, ErrorKind.INVALID_INPUT),
    ({"prompt": "Hi", "temperature": 5}, ErrorKind.INVALID_INPUT),
    ({"prompt": "Hi", "stream": False}, ErrorKind.INVALID_INPUT),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, ErrorKind.INVALID_INPUT),
    ({"prompt": "Hi", "backend": "nope"}, ErrorKind.CONFIG),
]


def open_sync(call: dict[str, Any]) -> Stream:
    options = dict(call)
    if "messages" in options:
        return stream_completion_with_messages_sync(options.pop("messages"), **options)
    return stream_completion_sync(options.pop("prompt"), **options)


def open_async(call: dict[str, Any]) -> AsyncStream:
    options = dict(call)
    if "messages" in options:
        return stream_completion_with_messages_async(options.pop("messages"), **options)
    return stream_completion_async(options.pop("prompt"), **options)


@pytest.mark.parametrize(("call", "kind"), BAD, ids=["empty", "temperature", "stream-option", "role", "backend"])
def test_bad_input_closed_unread_is_reported(
    ollama: FakeServer, observed: Observed, call: dict[str, Any], kind: ErrorKind
) -> None:
    with open_sync(call) as stream:
        pass

    async def main() -> LLMResponse:
        async with open_async(call) as astream:
            pass
        return astream.response

    for response in (stream.response, asyncio.run(main())):
        assert not response.success and response.error_kind is kind, response.error
        assert response.finish_reason != "cancelled" and response.attempts == 0
    assert ollama.requests == [] and observed.requests == []
    assert [r.error_kind for r in observed.responses] == [kind, kind]  # observed once each, as when read
    assert list(stream) == []


def test_a_valid_stream_closed_unread_sends_nothing(ollama: FakeServer, observed: Observed) -> None:
    stream = stream_completion_sync("Hi")
    stream.close()
    stream.close()

    async def main() -> LLMResponse:
        astream = stream_completion_async("Hi")
        await astream.aclose()
        assert [chunk async for chunk in astream] == []
        return astream.response

    for response in (stream.response, asyncio.run(main())):
        assert (response.success, response.finish_reason, response.attempts) == (True, "cancelled", 0)
    assert list(stream) == []
    assert ollama.requests == [] and observed.requests == [] and observed.responses == []


# -- a failed stream keeps the counts that arrived -------------------------------------------------


def stream_both(prompt: str = "Why is the sky blue?") -> list[LLMResponse]:
    with stream_completion_sync(prompt) as stream:
        list(stream)

    async def main() -> LLMResponse:
        async with stream_completion_async(prompt) as astream:
            [chunk async for chunk in astream]
        return astream.response

    return [stream.response, asyncio.run(main())]


def test_an_anthropic_stream_failing_after_message_start_keeps_its_input_count(anthropic_server: FakeServer) -> None:
    """The recorded stream: message_start (18 input tokens), then an overloaded_error event."""
    ANTHROPIC.route(anthropic_server, Reply(200, fixture("anthropic/error_midstream_200.sse"), dict(SSE), chunked=True))
    for response in stream_both():
        assert not response.success and response.error_kind is ErrorKind.OVERLOADED, response.error
        assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (18, 0, 18)
        assert response.usage_reported is True
        assert response.model_used == "claude-sonnet-4-20250514"  # as message_start said, not as asked


def test_an_openai_stream_failing_before_any_count_says_none_arrived(openai_server: FakeServer) -> None:
    OPENAI.route(openai_server, Reply(200, fixture("openai/error_midstream_200.sse"), dict(SSE), chunked=True))
    for response in stream_both():
        assert not response.success and response.error_kind is ErrorKind.SERVER, response.error
        assert (response.tokens_used, response.usage_reported) == (0, False)


@pytest.fixture
def gemini_site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    yield from open_site("gemini", monkeypatch)


@pytest.mark.parametrize("name", ["error_midstream_200.sse", "error_midstream_event_200.sse"])
def test_a_gemini_stream_failing_midway_keeps_the_counts_of_its_last_event(gemini_site: Site, name: str) -> None:
    """The recorded streams: one event (11 prompt tokens; 14 output and 206 thinking tokens, which
    count as output), then Google's 503 error, bare or as an event."""
    gemini_site.route_stream(Reply(200, fixture(f"gemini/{name}"), dict(SSE), chunked=True))
    for response in stream_both():
        assert not response.success and response.error_kind is ErrorKind.OVERLOADED, response.error
        assert response.content == '"Hi" in Portuguese is **"Oi"** (pronounced like'
        assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (11, 220, 231)
        assert response.usage_reported is True
        assert response.model_used == "gemini-3.1-pro-preview"  # as the event said, not as asked


def test_an_ollama_stream_failing_midway_says_no_count_arrived(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(fixture("ollama/error_midstream_200.ndjson")))
    for response in stream_both():
        assert not response.success and response.content == " Yes.", response.error
        assert (response.tokens_used, response.usage_reported) == (0, False)
    ollama.route("POST", "/api/chat", Reply(500, fixture("ollama/error_internal_500.json"), {}))
    whole = generate_completion_sync("Why?")  # a whole call that failed got no count either
    assert not whole.success and (whole.tokens_used, whole.usage_reported) == (0, False)
