"""Streaming on the ollama backend: the real ollama SDK over a socket against a fake Ollama server
sending NDJSON, byte for byte as the recorded fixtures (or split at awkward places)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

import chatplug
from chatplug import (
    ChatChunk,
    ErrorKind,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .conftest import BODY, LINES, PIECES, Observed, streamed
from .fakeserver import FakeServer, Reply, fixture

CONTENT = "".join(PIECES)


def line(**part: Any) -> bytes:
    """One NDJSON part as Go's encoding/json writes it: compact, raw UTF-8, a newline after it."""
    return json.dumps(part, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def part(content: str = "", thinking: str | None = None, model: str = "llama3.2") -> bytes:
    message = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking is not None else {})}
    return line(model=model, created_at="2025-07-07T20:32:53.1Z", message=message, done=False)


def final(model: str = "llama3.2", counts: bool = True, reason: str = "stop") -> bytes:
    usage = {"prompt_eval_count": 12, "eval_count": 7} if counts else {}
    message = {"role": "assistant", "content": ""}
    return line(model=model, created_at="2025-07-07T20:32:53.2Z", message=message, done=True, done_reason=reason,
                total_duration=1000, **usage)  # fmt: skip


def run_sync(prompt: str = "Why is the sky blue?", **options: Any) -> tuple[list[ChatChunk], LLMResponse]:
    with stream_completion_sync(prompt, **options) as stream:
        chunks = list(stream)
    return chunks, stream.response


def run_async(prompt: str = "Why is the sky blue?", **options: Any) -> tuple[list[ChatChunk], LLMResponse]:
    async def go() -> tuple[list[ChatChunk], LLMResponse]:
        async with stream_completion_async(prompt, **options) as stream:
            chunks = [chunk async for chunk in stream]
        return chunks, stream.response

    return asyncio.run(go())


pytestmark = pytest.mark.usefixtures("quiet_hangups")


RUNS = pytest.mark.parametrize("run", [run_sync, run_async], ids=["sync", "async"])
Run = Callable[..., tuple[list[ChatChunk], LLMResponse]]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def connection_closed(server: FakeServer) -> threading.Event:
    """Set once the fake server has closed its side of a connection (its socket is in this
    process too, and would otherwise be counted among the open descriptors)."""
    closed = threading.Event()
    httpd = server._httpd
    shutdown_request = httpd.shutdown_request

    def shutdown_and_signal(request: Any) -> None:
        shutdown_request(request)
        closed.set()

    httpd.shutdown_request = shutdown_and_signal  # type: ignore[method-assign]
    return closed


# -- success --------------------------------------------------------------------------------


@RUNS
def test_the_fixture_stream(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed())
    chunks, response = run()
    assert [chunk.text for chunk in chunks] == PIECES
    assert all(chunk.reasoning == "" for chunk in chunks)
    assert response.success, response.error
    assert response.content == CONTENT
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (31, 11, 42)
    assert response.usage_reported is True
    assert response.finish_reason == "stop"
    assert response.model_used == "llama3.2"
    assert response.backend == "ollama"
    assert response.time_to_first_token is not None
    assert 0 <= response.time_to_first_token <= response.response_time
    (request,) = ollama.requests
    body = request.json()
    assert body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert body["options"] == {"temperature": 0.7, "num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}


def test_the_fixture_is_sent_byte_exact(ollama: FakeServer) -> None:
    """The fake server sends the fixture's own bytes, one chunk per NDJSON line."""
    assert b"".join(LINES) == BODY and len(LINES) == 12 and all(x.endswith(b"\n") for x in LINES)


def test_messages_stream(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with stream_completion_with_messages_sync(messages, "qwen3", 0.1, 32, seed=3) as stream:
        assert "".join(chunk.text for chunk in stream) == CONTENT

    async def go() -> LLMResponse:
        async with stream_completion_with_messages_async(messages, "qwen3") as stream:
            async for _ in stream:
                pass
        return stream.response

    assert asyncio.run(go()).content == CONTENT
    first, second = (r.json() for r in ollama.requests)
    assert first["messages"] == second["messages"] == messages
    assert (first["model"], first["options"]["num_predict"], first["options"]["seed"]) == ("qwen3", 32, 3)


UTF8_TEXT = ["Caf", "é ", "☀️", " 日本", "語 ", "🙂"]
UTF8_BODY = b"".join(part(text) for text in UTF8_TEXT) + final()


def every(n: int) -> Callable[[bytes], list[bytes]]:
    return lambda body: [body[i : i + n] for i in range(0, len(body), n)]


def mid_utf8(body: bytes) -> list[bytes]:
    """Split inside every multi-byte character: after each UTF-8 lead byte."""
    pieces, start = [], 0
    for i, byte in enumerate(body):
        if byte >= 0xC0:
            pieces.append(body[start : i + 1])
            start = i + 1
    return [*pieces, body[start:]]


def mid_line(body: bytes) -> list[bytes]:
    """Each piece the end of one line and the start of the next."""
    lines = body.splitlines(keepends=True)
    pieces = [lines[0][:10]]
    for this, after in zip(lines, [*lines[1:], b""], strict=True):
        pieces.append(this[10:] + after[:10])
    return [piece for piece in pieces if piece]


SPLITS = [
    pytest.param(BODY, every(1), id="fixture-bytes"),
    pytest.param(BODY, every(7), id="fixture-7"),
    pytest.param(BODY, mid_line, id="fixture-mid-line"),
    pytest.param(UTF8_BODY, mid_utf8, id="utf8-mid-character"),
    pytest.param(UTF8_BODY, every(1), id="utf8-bytes"),
    pytest.param(UTF8_BODY, mid_line, id="utf8-mid-line"),
]


@RUNS
@pytest.mark.parametrize(("body", "split"), SPLITS)
def test_awkward_byte_boundaries(ollama: FakeServer, run: Run, body: bytes,
                                 split: Callable[[bytes], list[bytes]]) -> None:  # fmt: skip
    pieces = split(body)
    assert b"".join(pieces) == body and len(pieces) > len(body.splitlines())
    ollama.route("POST", "/api/chat", streamed(pieces=pieces))
    chunks, response = run()
    expected = PIECES if body is BODY else UTF8_TEXT
    assert [chunk.text for chunk in chunks] == expected
    assert response.success, response.error
    assert response.content == "".join(expected)
    assert response.finish_reason == "stop" and response.usage_reported


THINKING = ["The user", " asks about", " France."]
ANSWER = ["Paris", "."]
THINKING_BODY = (
    b"".join(part("", thinking=text, model="qwen3") for text in THINKING)
    + b"".join(part(text, model="qwen3") for text in ANSWER)
    + final(model="qwen3")
)


@RUNS
def test_thinking_is_streamed_as_reasoning(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(THINKING_BODY))
    chunks, response = run("Capital of France?", model_name="qwen3", think=True)
    assert [(chunk.text, chunk.reasoning) for chunk in chunks] == [("", t) for t in THINKING] + [
        (a, "") for a in ANSWER
    ]
    assert response.success, response.error
    assert response.content == "Paris."
    assert response.reasoning == "The user asks about France."
    assert response.model_used == "qwen3"
    assert response.time_to_first_token is not None  # reasoning counts as the first token
    body = ollama.requests[0].json()
    assert (body["think"], body["stream"]) == (True, True)
    assert "think" not in body["options"]


def test_thinking_on_a_whole_reply(ollama: FakeServer) -> None:
    reply = {
        "model": "qwen3",
        "created_at": "2025-07-07T20:32:53.1Z",
        "message": {"role": "assistant", "content": "Paris.", "thinking": "The user asks about France."},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 12,
        "eval_count": 20,
    }
    body = json.dumps(reply, separators=(",", ":")).encode()
    ollama.route("POST", "/api/chat", Reply(200, body, {"Content-Type": "application/json; charset=utf-8"}))
    for response in (
        generate_completion_sync("Capital of France?", "qwen3", think=True),
        asyncio.run(generate_completion_async("Capital of France?", "qwen3", think=True)),
    ):
        assert response.success, response.error
        assert (response.content, response.reasoning) == ("Paris.", "The user asks about France.")
        assert response.time_to_first_token is None  # not streamed
    assert [r.json()["think"] for r in ollama.requests] == [True, True]


@RUNS
def test_a_final_part_without_counts(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(part("Hi") + part(" there") + final(counts=False)))
    _, response = run()
    assert response.success, response.error
    assert response.content == "Hi there"
    assert response.usage_reported is False
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (0, 0, 0)
    assert response.finish_reason == "stop"


@RUNS
def test_a_length_stop(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(part("Hi") + final(reason="length")))
    _, response = run(max_tokens=1)
    assert response.finish_reason == "length"


def test_a_stream_reuses_the_cached_client(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed())
    for _ in range(3):
        assert run_sync()[1].success
    assert ollama.connections == 1

    async def twice() -> list[bool]:
        results = []
        for _ in range(2):
            async with stream_completion_async("Hi") as stream:
                async for _chunk in stream:
                    pass
            results.append(stream.response.success)
        return results

    assert asyncio.run(twice()) == [True, True]
    assert ollama.connections == 2  # one more: the event loop's own client


# -- failures: never raised, the text that arrived kept ------------------------------------


@RUNS
def test_an_error_line_mid_stream(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(fixture("ollama/error_midstream_200.ndjson")))
    chunks, response = run()
    assert [chunk.text for chunk in chunks] == [" Yes", "."]
    assert not response.success
    assert response.error_kind is ErrorKind.SERVER
    assert response.content == " Yes."
    assert "an error was encountered while running the model" in (response.error or "")
    assert "failed while generating" in (response.error or "")
    assert response.exception is not None
    assert response.exception.__cause__ is None and response.exception.__context__ is None
    assert response.time_to_first_token is not None


@RUNS
def test_a_connection_reset_mid_body(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], reset=True))
    chunks, response = run()
    assert not response.success
    assert response.error_kind is ErrorKind.CONNECTION
    assert "broke before the reply was complete" in (response.error or "")
    assert [chunk.text for chunk in chunks] == PIECES[:3]  # on loopback the data arrives before the RST
    assert response.content == "Rayleigh scattering"
    assert response.exception is not None and response.exception.__cause__ is None


@RUNS
def test_a_body_truncated_mid_line(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=[*LINES[:3], LINES[3][:25]]))
    chunks, response = run()
    assert [chunk.text for chunk in chunks] == PIECES[:3]
    assert not response.success
    assert response.error_kind is ErrorKind.SERVER
    assert "could not read" in (response.error or "")
    assert response.content == "Rayleigh scattering"


@RUNS
def test_a_body_that_ends_before_the_final_part(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:4]))
    _, response = run()
    assert not response.success
    assert response.error_kind is ErrorKind.SERVER
    assert "before the reply was complete" in (response.error or "")
    assert response.content == "Rayleigh scattering:"


@RUNS
def test_a_line_that_is_no_chat_part(ollama: FakeServer, run: Run) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=[LINES[0], b'{"message": 5}\n']))
    _, response = run()
    assert response.error_kind is ErrorKind.SERVER
    assert "could not read" in (response.error or "")
    assert response.content == "Ray"


@RUNS
def test_an_http_error_before_the_stream(ollama: FakeServer, run: Run) -> None:
    body = fixture("ollama/error_model_not_found_404.json")
    ollama.route("POST", "/api/chat", Reply(404, body, {"Content-Type": "application/json; charset=utf-8"}))
    chunks, response = run(model_name="nonexistent-model")
    assert chunks == []
    assert response.error_kind is ErrorKind.NOT_FOUND
    assert "ollama pull nonexistent-model" in (response.error or "")
    assert response.time_to_first_token is None


@RUNS
def test_connection_refused(monkeypatch: pytest.MonkeyPatch, closed_port: int, run: Run) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port}")
    chunks, response = run()
    assert chunks == []
    assert response.error_kind is ErrorKind.CONNECTION
    assert "ollama serve" in (response.error or "")


@RUNS
def test_a_timeout(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer, run: Run) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "0.3")
    ollama.route("POST", "/api/chat", Reply(hang=True))
    _, response = run()
    assert response.error_kind is ErrorKind.TIMEOUT


@RUNS
def test_bad_input_sends_nothing(ollama: FakeServer, run: Run) -> None:
    chunks, response = run("")
    assert chunks == []
    assert not response.success
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert ollama.requests == []


@RUNS
def test_an_option_the_sdk_refuses(ollama: FakeServer, run: Run) -> None:
    _, response = run(format="xml")
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert "nothing was sent" in (response.error or "")
    assert ollama.requests == []


# -- stopping early ----------------------------------------------------------------------------


def test_leaving_the_with_block_after_a_break_closes_the_connection_at_once(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    closed = connection_closed(ollama)
    before = open_fds()
    with stream_completion_sync("Hi") as stream:
        for chunk in stream:
            assert chunk.text == "Ray"
            break
        assert not stream.done  # a break closes nothing: the stream is its own iterator, a `for` goes on
    assert ollama.disconnected.wait(5)  # closed by leaving the block
    assert closed.wait(5)
    response = stream.response
    assert response.success
    assert response.finish_reason == "cancelled"
    assert response.content == "Ray"
    assert response.time_to_first_token is not None
    chatplug.close()
    assert open_fds() == before


def test_a_stream_dropped_after_a_break_closes_at_once(ollama: FakeServer, observed: Observed) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    stream = stream_completion_sync("Hi")
    for _ in stream:
        break
    assert not stream.done
    del stream  # its last reference: the stream and its generator are freed, and the response closed
    assert ollama.disconnected.wait(5)
    assert [r.finish_reason for r in observed.responses] == ["cancelled"]


def test_async_leaving_early_closes_the_connection_at_once(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    closed = connection_closed(ollama)
    before = open_fds()

    async def go() -> LLMResponse:
        async with stream_completion_async("Hi") as stream:
            async for chunk in stream:
                assert chunk.text == "Ray"
                break
        # Closed when the block was left: before the event loop (and its client) shuts down.
        assert await asyncio.to_thread(ollama.disconnected.wait, 5)
        return stream.response

    response = asyncio.run(go())
    assert (response.success, response.finish_reason, response.content) == (True, "cancelled", "Ray")
    assert closed.wait(5)
    chatplug.close()
    assert open_fds() == before


def test_cancelling_the_task_closes_the_stream(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", streamed(pieces=LINES[:3], hold=True))
    got: list[str] = []
    streams: list[chatplug.AsyncStream] = []

    async def consume(first: asyncio.Event) -> None:
        async with stream_completion_async("Hi") as stream:
            streams.append(stream)
            async for chunk in stream:
                got.append(chunk.text)
                first.set()

    async def go() -> None:
        first = asyncio.Event()
        task = asyncio.create_task(consume(first))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(ollama.disconnected.wait, 5)

    asyncio.run(go())
    assert got[0] == "Ray" and CONTENT.startswith("".join(got))
    (stream,) = streams
    assert stream.response.finish_reason == "cancelled"
    assert stream.response.content == "".join(got)


# -- observers ---------------------------------------------------------------------------------


@pytest.fixture
def recorder(observed: Observed) -> Observed:
    return observed


def test_observers_fire_once_per_stream(ollama: FakeServer, recorder: Observed) -> None:
    ollama.route(
        "POST",
        "/api/chat",
        streamed(),
        streamed(fixture("ollama/error_midstream_200.ndjson")),
        streamed(pieces=LINES[:3], hold=True),
        streamed(),
    )
    run_sync()
    run_sync()
    with stream_completion_sync("Hi") as stream:
        for _ in stream:
            break
    run_async()
    assert [r.backend for r in recorder.requests] == ["ollama"] * 4
    outcomes = [(r.success, r.error_kind, r.finish_reason) for r in recorder.responses]
    assert outcomes == [
        (True, None, "stop"),
        (False, ErrorKind.SERVER, None),
        (True, None, "cancelled"),
        (True, None, "stop"),
    ]
    assert recorder.responses[1].content == " Yes."
