"""Streaming through the openai and anthropic backends: their real SDKs over a socket, against
the fake server sending the recorded SSE streams (byte for byte, or split at awkward places), and
streams built here for what no recording shows (reasoning, keep-alives, errors mid-stream).

Every test runs for both providers, and (but for the ones about stopping a stream, which differ)
through the sync and the async stream functions alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

import chatplug
from chatplug import (
    ChatChunk,
    ErrorKind,
    LLMResponse,
    generate_completion_sync,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)
from chatplug._plugins import plugins

from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI, RAISED, REQUEST_ID, Provider, provider_server

SSE = "text/event-stream; charset=utf-8"
PROMPT = "Why is the sky blue?"

Streamed = tuple[list[ChatChunk], LLMResponse]


# -- each provider's streams -------------------------------------------------------------------


@dataclass(frozen=True)
class Streaming:
    """A provider's streaming API as the fake server plays it: its recorded stream (and what it
    says), and streams built in its wire format."""

    provider: Provider
    recorded: str  # the recorded stream's fixture
    texts: tuple[str, ...]  # its text deltas
    tokens: tuple[int, int]  # its (prompt, completion) tokens
    model: str  # the model it names
    request: str  # the request fixture of a stream
    finish: str  # the provider's word for a natural stop

    def __str__(self) -> str:  # the test id
        return self.provider.backend

    def reply(self, body: bytes | None = None, **reply: Any) -> Reply:
        """``body`` (by default the recorded stream) as an SSE reply with the provider's headers;
        ``reply`` sets the other ``Reply`` fields (``pieces``, ``hold``, ``reset``)."""
        headers = {"Content-Type": SSE, self.provider.request_id_header: REQUEST_ID}
        data = fixture(f"{self.provider.backend}/{self.recorded}") if body is None else body
        return Reply(200, data, headers, chunked=True, **reply)

    def route(self, server: FakeServer, *replies: Reply) -> None:
        self.provider.route(server, *replies)

    def events(
        self,
        texts: Sequence[str] = (),
        *,
        reasoning: Sequence[str] = (),
        finish: str | None = "stop",
        usage: bool = True,
        noise: bool = False,
    ) -> bytes:
        """A stream with ``reasoning`` then ``texts`` deltas; it ends (with ``finish`` and the
        counts) only if ``finish`` is set. ``noise``: keep-alives and empty deltas between."""
        raise NotImplementedError

    def error(self, kind: str, message: str) -> bytes:
        """An error event, as the provider sends one inside a 200 stream."""
        raise NotImplementedError


def _data(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class OpenAIStreaming(Streaming):
    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return _data(
            {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1782321902, "model": self.model,
             "choices": choices, **extra}
        )  # fmt: skip

    def events(
        self,
        texts: Sequence[str] = (),
        *,
        reasoning: Sequence[str] = (),
        finish: str | None = "stop",
        usage: bool = True,
        noise: bool = False,
    ) -> bytes:
        counted = {"usage": None} if usage else {}
        out = [self._chunk({"role": "assistant", "content": ""}, **counted)]
        quiet = [
            b": keep-alive\n\n",  # an SSE comment (OpenRouter sends them while it waits)
            self._chunk({}, **counted),
            self._chunk({"content": ""}, **counted),
            self._chunk({"content": None, "reasoning_content": None}, **counted),
        ]
        for piece in reasoning:
            out += [self._chunk({"content": None, "reasoning_content": piece}, **counted)] + (quiet if noise else [])
        for piece in texts:
            out += [self._chunk({"content": piece}, **counted)] + (quiet if noise else [])
        if finish is None:
            return b"".join(out)
        out.append(self._chunk({}, finish, **counted))
        if usage:
            count = {"prompt_tokens": self.tokens[0], "completion_tokens": self.tokens[1], "total_tokens": 17}
            out.append(self._chunk(None, usage=count))
        return b"".join([*out, b"data: [DONE]\n\n"])

    def error(self, kind: str, message: str) -> bytes:
        return _data({"error": {"message": message, "type": kind, "param": None, "code": None}})


class AnthropicStreaming(Streaming):
    @staticmethod
    def _event(name: str, **data: Any) -> bytes:
        return f"event: {name}\n".encode() + _data({"type": name, **data})

    def _block(self, index: int, start: dict[str, Any], deltas: list[dict[str, Any]], noise: bool) -> list[bytes]:
        quiet = [b'event: ping\ndata: {"type": "ping"}\n\n', self._delta(index, {"type": "text_delta", "text": ""})]
        out = [self._event("content_block_start", index=index, content_block=start)]
        for delta in deltas:
            out += [self._delta(index, delta)] + (quiet if noise else [])
        return out

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", index=index, delta=delta)

    def events(
        self,
        texts: Sequence[str] = (),
        *,
        reasoning: Sequence[str] = (),
        finish: str | None = "end_turn",
        usage: bool = True,
        noise: bool = False,
    ) -> bytes:
        finish = "end_turn" if finish == "stop" else finish
        message: dict[str, Any] = {
            "model": self.model, "id": "msg_01", "type": "message", "role": "assistant", "content": [],
            "stop_reason": None, "stop_sequence": None,
        }  # fmt: skip
        if usage:
            message["usage"] = {"input_tokens": self.tokens[0], "output_tokens": 1}
        out = [self._event("message_start", message=message)]
        index = 0
        if reasoning:
            thinking = [{"type": "thinking_delta", "thinking": piece} for piece in reasoning]
            signed = [*thinking, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}]
            out += self._block(0, {"type": "thinking", "thinking": "", "signature": ""}, signed, noise)
            out.append(self._event("content_block_stop", index=0))
            index = 1
        text = [{"type": "text_delta", "text": piece} for piece in texts]
        out += self._block(index, {"type": "text", "text": ""}, text, noise)
        if finish is None:
            return b"".join(out)
        counts = {"output_tokens": self.tokens[1]} if usage else {}
        delta = self._event("message_delta", delta={"stop_reason": finish, "stop_sequence": None}, usage=counts)
        out += [self._event("content_block_stop", index=index), delta, self._event("message_stop")]
        return b"".join(out)

    def error(self, kind: str, message: str) -> bytes:
        return self._event("error", error={"type": kind, "message": message})


OPENAI_STREAMING = OpenAIStreaming(
    OPENAI, "chat_stream_200.sse", ("Ray", "leigh", " scattering", "."), (13, 4), "gpt-4o-mini-2024-07-18",
    "chat_stream_request.json", "stop",
)  # fmt: skip
ANTHROPIC_STREAMING = AnthropicStreaming(
    ANTHROPIC, "messages_stream_200.sse",
    ("Rayleigh", " scattering: air molecules", " scatter blue light more than red."), (18, 17),
    "claude-sonnet-4-20250514", "messages_stream_request.json", "end_turn",
)  # fmt: skip
APIS = [OPENAI_STREAMING, ANTHROPIC_STREAMING]


@pytest.fixture(params=APIS, ids=str)
def api(request: pytest.FixtureRequest) -> Streaming:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server(api: Streaming, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The provider's fake server, answering with its recorded stream."""
    for served in provider_server(monkeypatch, api.provider):
        api.route(served, api.reply())
        yield served


# -- streaming calls -------------------------------------------------------------------------


def stream_both(payload: str | list[dict[str, str]] = PROMPT, *args: Any, **kwargs: Any) -> list[Streamed]:
    """The chunks and the final response of the same call, streamed sync and async."""
    if isinstance(payload, str):
        with stream_completion_sync(payload, *args, **kwargs) as stream:
            chunks = list(stream)
        synced = (chunks, stream.response)
    else:
        with stream_completion_with_messages_sync(payload, *args, **kwargs) as stream:
            chunks = list(stream)
        synced = (chunks, stream.response)

    async def run() -> Streamed:
        if isinstance(payload, str):
            streaming = stream_completion_async(payload, *args, **kwargs)
        else:
            streaming = stream_completion_with_messages_async(payload, *args, **kwargs)
        async with streaming as astream:
            got = [chunk async for chunk in astream]
        return got, astream.response

    return [synced, asyncio.run(run())]


def texts_of(chunks: list[ChatChunk]) -> list[str]:
    return [chunk.text for chunk in chunks]


def check_streamed(api: Streaming, streamed: list[Streamed], texts: Sequence[str] | None = None) -> None:
    """Each call gave ``texts`` (by default the recorded stream's) chunk by chunk, and a
    response with their sum, the recorded counts, model and finish reason, and the time to
    the first token."""
    texts = api.texts if texts is None else texts
    for chunks, response in streamed:
        assert response.success, response.error
        assert texts_of(chunks) == list(texts)
        assert all(chunk.reasoning == "" for chunk in chunks)
        assert response.content == "".join(texts) and response.reasoning == ""
        assert (response.prompt_tokens, response.completion_tokens) == api.tokens
        assert response.tokens_used == sum(api.tokens) and response.usage_reported
        assert (response.model_used, response.finish_reason) == (api.model, "stop")  # end_turn, normalised
        assert response.backend == api.provider.backend
        assert response.time_to_first_token is not None
        assert 0 < response.time_to_first_token <= response.response_time


def check_failed(streamed: list[Streamed], kind: ErrorKind, texts: Sequence[str], *words: str) -> None:
    """Each call failed with ``kind`` (never raised), after yielding ``texts``, which the
    response keeps."""
    for chunks, response in streamed:
        assert not response.success
        assert response.error_kind is kind, response.error
        assert response.error is not None
        if response.backend is not None:  # a call refused before a backend was chosen names none
            assert response.error.startswith(f"{response.backend}: ")
        for word in words:
            assert word in response.error
        assert texts_of(chunks) == list(texts)
        assert response.content == "".join(texts)
        assert (response.time_to_first_token is not None) == bool(texts)
        with pytest.raises(chatplug.ChatplugError) as raised:
            response.raise_for_error()
        assert type(raised.value) is RAISED.get(kind, type(raised.value))


# -- the recorded streams ----------------------------------------------------------------------


def test_the_recorded_stream(api: Streaming, server: FakeServer) -> None:
    check_streamed(api, stream_both())
    assert [(r.method, r.path) for r in server.requests] == [("POST", api.provider.endpoint)] * 2


def test_the_request_asks_for_a_stream(api: Streaming, server: FakeServer) -> None:
    """The body is the recorded streaming request's (openai: with usage asked for), plus the
    settings chatplug always sends."""
    expected = json.loads(fixture(f"{api.provider.backend}/{api.request}"))
    check_streamed(api, stream_both(PROMPT, expected["model"], max_tokens=expected.get("max_tokens", 500)))
    for request in server.requests:
        body = request.json()
        assert {key: body[key] for key in expected} == expected
        assert body["stream"] is True


def test_openai_callers_stream_options_win(openai_server: FakeServer) -> None:
    OPENAI_STREAMING.route(openai_server, OPENAI_STREAMING.reply(fixture("openai/chat_stream_no_usage_200.sse")))
    for _, response in stream_both(PROMPT, stream_options={"include_usage": False}):
        assert response.success and response.content == "Rayleigh scattering."
        assert response.usage_reported is False
    assert [r.json()["stream_options"] for r in openai_server.requests] == [{"include_usage": False}] * 2


def test_the_padded_anthropic_stream(anthropic_server: FakeServer) -> None:
    """Anthropic pads its events' JSON with spaces before the last brace."""
    padded = fixture("anthropic/messages_stream_200_padded.sse")
    assert b"       }" in padded
    ANTHROPIC_STREAMING.route(anthropic_server, ANTHROPIC_STREAMING.reply(padded))
    check_streamed(ANTHROPIC_STREAMING, stream_both())


def test_anthropic_null_events_are_skipped(anthropic_server: FakeServer) -> None:
    """A named event whose data is ``null``, or a block start without its block, is passed on by the
    SDK as it is (events are read as JSON, unchecked); the stream skips them, as it did typed."""
    body = fixture("anthropic/messages_stream_200.sse")
    first = body.index(b"\n\n") + 2
    odd = (
        b"event: message_delta\ndata: null\n\n"
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 9}\n\n'
    )
    ANTHROPIC_STREAMING.route(anthropic_server, ANTHROPIC_STREAMING.reply(body[:first] + odd + body[first:]))
    check_streamed(ANTHROPIC_STREAMING, stream_both())


def _split_every(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def _split_inside(body: bytes, marks: Sequence[bytes]) -> list[bytes]:
    """``body`` split one byte into each of ``marks`` wherever they occur."""
    cuts = sorted({i + 1 for mark in marks for i in range(len(body)) if body.startswith(mark, i)})
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "split",
    [
        pytest.param(lambda body: _split_every(body, 1), id="every-byte"),
        pytest.param(lambda body: _split_every(body, 7), id="every-7-bytes"),
        pytest.param(lambda body: _split_inside(body, [b"\n\n", b"data:", "é".encode(), "散".encode()]), id="marks"),
    ],
)
def test_a_stream_split_at_awkward_places(api: Streaming, server: FakeServer, split: Any) -> None:
    """Mid-line, between the two newlines that end an event, inside ``data:`` and inside a
    multi-byte UTF-8 character: the chunks are whole and the text exact."""
    texts = ("Rayleigh ", "scattering — é", "t散乱 🌈", ".")
    body = api.events(texts)
    pieces = split(body)
    assert b"".join(pieces) == body and len(pieces) > 10
    assert any(not _is_utf8(piece) for piece in pieces)  # a character cut in two
    api.route(server, api.reply(pieces=pieces))
    check_streamed(api, stream_both(), texts)


def test_recorded_stream_one_byte_at_a_time(api: Streaming, server: FakeServer) -> None:
    api.route(server, api.reply(pieces=_split_every(fixture(f"{api.provider.backend}/{api.recorded}"), 1)))
    check_streamed(api, stream_both())


def test_keep_alives_and_empty_deltas_are_skipped(api: Streaming, server: FakeServer) -> None:
    texts = ("Rayleigh", " scattering.")
    api.route(server, api.reply(api.events(texts, noise=True)))
    check_streamed(api, stream_both(), texts)  # no chunk without text


def test_no_usage_is_not_reported_as_zero(api: Streaming, server: FakeServer) -> None:
    body = fixture("openai/chat_stream_no_usage_200.sse") if api is OPENAI_STREAMING else None
    api.route(server, api.reply(body or api.events(api.texts, usage=False)))
    for chunks, response in stream_both():
        assert response.success and texts_of(chunks) == list(api.texts)
        assert response.usage_reported is False
        assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (0, 0, 0)
        assert response.finish_reason == "stop"


# -- reasoning ---------------------------------------------------------------------------------


def test_reasoning_is_streamed_apart_from_the_text(api: Streaming, server: FakeServer) -> None:
    thinking, texts = ("The sky: ", "short waves scatter."), ("Rayleigh", " scattering.")
    api.route(server, api.reply(api.events(texts, reasoning=thinking, noise=True)))
    for chunks, response in stream_both():
        assert response.success, response.error
        assert [(c.text, c.reasoning) for c in chunks] == [("", r) for r in thinking] + [(t, "") for t in texts]
        assert response.reasoning == "The sky: short waves scatter."
        assert response.content == "Rayleigh scattering."
        assert response.time_to_first_token is not None  # reasoning counts as the first token


def test_openai_reasoning_field_is_reasoning_too(openai_server: FakeServer) -> None:
    """OpenRouter and Ollama name the field ``reasoning``."""
    body = OPENAI_STREAMING.events(["Blue."], reasoning=["Hmm."]).replace(b'"reasoning_content"', b'"reasoning"')
    OPENAI_STREAMING.route(openai_server, OPENAI_STREAMING.reply(body))
    for _, response in stream_both():
        assert (response.reasoning, response.content) == ("Hmm.", "Blue.")


def test_openai_whole_reply_reasoning_and_missing_usage(openai_server: FakeServer) -> None:
    body = json.loads(fixture("openai/chat_nonstream_200.json"))
    body["choices"][0]["message"]["reasoning_content"] = "Short waves scatter more."
    del body["usage"]
    OPENAI.route(openai_server, OPENAI.reply(json.dumps(body).encode()))
    response = generate_completion_sync("Hi")
    assert response.success, response.error
    assert response.reasoning == "Short waves scatter more."
    assert "Short waves" not in response.content
    assert response.usage_reported is False and response.tokens_used == 0


def test_anthropic_whole_reply_thinking_is_reasoning(anthropic_server: FakeServer) -> None:
    body = (
        b'{"model":"claude-x","id":"msg_01","type":"message","role":"assistant","content":['
        b'{"type":"thinking","thinking":"Short waves ","signature":"c2ln"},{"type":"text","text":"Blue "},'
        b'{"type":"thinking","thinking":"scatter more.","signature":"c2ln"},{"type":"text","text":"light."}],'
        b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}'
    )
    ANTHROPIC.route(anthropic_server, ANTHROPIC.reply(body))
    response = generate_completion_sync("Hi")
    assert (response.content, response.reasoning) == ("Blue light.", "Short waves scatter more.")


# -- failures during the stream ------------------------------------------------------------------

MIDSTREAM = [
    (OPENAI_STREAMING, "server_error", "The server had an error while processing your request.", ErrorKind.SERVER),
    (OPENAI_STREAMING, "invalid_request_error", "This model's maximum context length is 8192 tokens.",
     ErrorKind.CONTEXT_LENGTH),
    (ANTHROPIC_STREAMING, "overloaded_error", "Overloaded", ErrorKind.OVERLOADED),
    (ANTHROPIC_STREAMING, "rate_limit_error", "Number of concurrent connections has exceeded your rate limit.",
     ErrorKind.RATE_LIMIT),
    (ANTHROPIC_STREAMING, "api_error", "Internal server error", ErrorKind.SERVER),
]  # fmt: skip


def test_the_recorded_error_event(api: Streaming, server: FakeServer) -> None:
    """The recorded error event in a 200 stream: the SDKs raise a generic error for it (anthropic:
    an APIStatusError with status 200); its type gives the kind."""
    api.route(server, api.reply(fixture(f"{api.provider.backend}/error_midstream_200.sse")))
    kind, words = (
        (ErrorKind.SERVER, "server_error") if api is OPENAI_STREAMING else (ErrorKind.OVERLOADED, "overloaded_error")
    )
    streamed = stream_both()
    check_failed(streamed, kind, [], "reported an error during the stream", words)
    assert all("HTTP 200" not in (response.error or "") for _, response in streamed)


@pytest.mark.parametrize(
    ("api", "error_type", "message", "kind"), MIDSTREAM, ids=[f"{case[0]}-{case[1]}" for case in MIDSTREAM]
)
def test_an_error_event_after_some_text(
    api: Streaming, server: FakeServer, error_type: str, message: str, kind: ErrorKind
) -> None:
    """An error event after some text: the kind its type says, the text kept."""
    texts = ("Rayleigh", " scatter")
    api.route(server, api.reply(api.events(texts, finish=None) + api.error(error_type, message)))
    check_failed(stream_both(), kind, texts, f"({error_type})", message.rstrip("."))
    assert len(server.requests) == 2  # an error inside a stream is not retried


def test_a_connection_reset_mid_body(api: Streaming, server: FakeServer) -> None:
    texts = ("Rayleigh", " scatter")
    api.route(server, api.reply(pieces=[api.events(texts, finish=None)], reset=True))
    streamed = stream_both()
    check_failed(streamed, ErrorKind.CONNECTION, texts, "broke before the reply was complete")
    assert all("attempts" not in (response.error or "") for _, response in streamed)  # nothing is retried mid-stream
    assert len(server.requests) == 2


@pytest.mark.parametrize("cut", ["between-events", "inside-an-event"])
def test_a_truncated_stream(api: Streaming, server: FakeServer, cut: str) -> None:
    """The body ends (as HTTP goes, cleanly) before the provider said why it stopped."""
    texts = ("Rayleigh", " scatter")
    body = api.events(texts, finish=None)
    if cut == "inside-an-event":
        body += api.events([*texts, "ing."], finish=None)[len(body) :][:40]  # the start of the next event
    api.route(server, api.reply(pieces=[body]))
    check_failed(stream_both(), ErrorKind.SERVER, texts)


def test_bad_input_yields_nothing_and_sends_nothing(api: Streaming, server: FakeServer) -> None:
    bad = [
        stream_both(PROMPT, extra_body=5),  # the SDK refuses it
        stream_both(PROMPT, stream=False),  # chatplug decides
        stream_both([{"role": "robot", "content": "Hi"}]),
    ]
    for streamed in bad:
        check_failed(streamed, ErrorKind.INVALID_INPUT, [])
    assert server.requests == []


def test_a_stream_borrows_the_cached_client(api: Streaming, server: FakeServer) -> None:
    cache = plugins().backends.get(api.provider.backend)._clients  # type: ignore[attr-defined]
    check_streamed(api, stream_both())
    api.route(server, api.provider.reply(api.provider.success))
    assert generate_completion_sync("Hi").success
    assert len(cache) == 1


# -- stopping a stream ---------------------------------------------------------------------------


def open_fds(server: FakeServer) -> int:
    """How many file descriptors this process has open, leaving out the fake server's sockets:
    it closes its end of a connection on its own thread, just after the client left."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                with socket.socket(fileno=os.dup(int(name))) as sock:
                    local = sock.getsockname()
                    if sock.family == socket.AF_INET and local[1] == server.port:
                        continue
        except OSError:  # closed meanwhile (the listing's own descriptor among them)
            continue
        count += 1
    return count


def held(api: Streaming) -> Reply:
    """The first text, then nothing: the server waits for the client to close the connection."""
    return api.reply(pieces=[api.events(["Rayleigh"], finish=None)], hold=True)


def check_stopped(server: FakeServer, response: LLMResponse, fds: int) -> None:
    assert server.disconnected.wait(5)  # the HTTP response was closed, not left to the pool or GC
    assert response.success and response.finish_reason == "cancelled"
    assert response.content == "Rayleigh"
    assert response.time_to_first_token is not None
    chatplug.close()
    assert open_fds(server) == fds


def test_closing_after_a_break_closes_the_connection_at_once(api: Streaming, server: FakeServer) -> None:
    api.route(server, held(api))
    fds = open_fds(server)
    stream = stream_completion_sync(PROMPT)
    for chunk in stream:
        assert chunk.text == "Rayleigh"
        break
    assert not stream.done  # a break closes nothing: the stream is its own iterator, a `for` goes on
    stream.close()
    check_stopped(server, stream.response, fds)


def test_closing_a_stream_closes_the_connection_at_once(api: Streaming, server: FakeServer) -> None:
    api.route(server, held(api))
    fds = open_fds(server)
    with stream_completion_sync(PROMPT) as stream:
        iterator = iter(stream)
        assert next(iterator).text == "Rayleigh"
        stream.close()
    check_stopped(server, stream.response, fds)


def test_leaving_an_async_stream_closes_the_connection_at_once(api: Streaming, server: FakeServer) -> None:
    api.route(server, held(api))
    fds = open_fds(server)

    async def run() -> LLMResponse:
        async with stream_completion_async(PROMPT) as stream:
            async for chunk in stream:
                assert chunk.text == "Rayleigh"
                break
        assert stream.done
        return stream.response

    check_stopped(server, asyncio.run(run()), fds)


def test_cancelling_the_task_closes_the_stream(api: Streaming, server: FakeServer) -> None:
    api.route(server, held(api))
    fds = open_fds(server)

    async def run() -> LLMResponse:
        stream = stream_completion_async(PROMPT)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()  # the task now waits for a second chunk that never comes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert stream.done
        return stream.response

    check_stopped(server, asyncio.run(run()), fds)
