"""The call's deadline is hard, sync and async: whatever the server does (drips its reply a byte at a
time, never answers, asks to be retried in an hour), a call returns by its deadline plus a small
slack. Real SDKs over sockets against the fake server; elapsed times are asserted only as upper
bounds (these tests check a bound, not a speed)."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse, settings
from chatplug._plugins import plugins
from chatplug.toolkit import deadline_client, deadline_scope, deadline_transport, first_within

from .conftest import registered
from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI

BACKENDS = ("ollama", "openai", "anthropic", "gemini")
MODES = ("sync", "async", "stream", "astream")
SLACK = 0.5  # seconds a call may take past its deadline
JSON = {"Content-Type": "application/json"}
T = TypeVar("T")

#: Google's error statuses (``google.rpc.Code`` names) by HTTP status, as Gemini sends them.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def google_error(status: int, message: str, retry_delay: str | None = None) -> bytes:
    """An error body in Google's shape (``{"error": {"code", "message", "status", "details"}}``),
    with a ``google.rpc.RetryInfo`` detail when ``retry_delay`` ("37s") is given, as Gemini says
    how long to wait on a 429."""
    error: dict[str, Any] = {"code": status, "message": message, "status": GOOGLE_STATUS.get(status, "UNKNOWN")}
    if retry_delay is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    return json.dumps({"error": error}).encode()


@dataclass
class Site:
    """A backend's fake server: where its SDK posts, and the bodies it answers with. Whole calls
    and streams post to ``endpoint``, but for a backend whose streams have an endpoint of their
    own (``stream_endpoint``: Gemini's ``:streamGenerateContent``)."""

    backend: str
    server: FakeServer
    endpoint: str
    stream_endpoint: str | None = None

    def route(self, *replies: Reply) -> None:
        """Answer every call, whole or streamed, with ``replies`` (in order, the last repeating)."""
        self.server.route("POST", self.endpoint, *replies)
        if self.stream_endpoint is not None:
            self.server.route("POST", self.stream_endpoint, *replies)

    def route_stream(self, *replies: Reply) -> None:
        """Answer streams with ``replies``: on a backend whose streams have an endpoint of their
        own, whole calls keep what ``route`` gave them; on the others, whole calls get these too."""
        self.server.route("POST", self.stream_endpoint or self.endpoint, *replies)

    def succeed(self, **options: Any) -> None:
        """Answer with the backend's recorded success, ``options`` as the reply's (a drip...):
        whole calls get its JSON body and, where streams have an endpoint of their own, streams
        get its recorded stream (one endpoint for both cannot tell them apart: JSON for all)."""
        self.route(Reply(200, self.success, dict(JSON), **options))
        if self.stream_endpoint is not None:
            self.route_stream(self.stream_reply(**options))

    def stream_reply(self, **options: Any) -> Reply:
        """The backend's recorded stream as its server sends it, ``options`` as the reply's."""
        content_type = "application/x-ndjson" if self.backend == "ollama" else "text/event-stream"
        return Reply(200, self.stream_success, {"Content-Type": content_type}, **options)

    def stream_events(self) -> list[bytes]:
        """The recorded stream's events, each whole: NDJSON lines, or SSE events with the blank
        line that ends each."""
        if self.backend == "ollama":
            return self.stream_success.splitlines(keepends=True)
        return re.findall(rb".+?(?:\r\n\r\n|\n\n)", self.stream_success, re.DOTALL)

    @property
    def success(self) -> bytes:
        return fixture(SUCCESS[self.backend])

    @property
    def stream_success(self) -> bytes:
        return fixture(STREAM_SUCCESS[self.backend])

    def error(self, status: int, headers: dict[str, str] | None = None) -> Reply:
        body = {
            "ollama": b'{"error":"slow down"}',
            "openai": OPENAI.error_json("rate_limit_exceeded", "slow down"),
            "anthropic": ANTHROPIC.error_json("rate_limit_error", "slow down"),
            "gemini": google_error(status, "slow down"),
        }[self.backend]
        return Reply(status, body, {**JSON, **(headers or {})})

    def rate_limited(self, seconds: int) -> Reply:
        """A 429 asking to be retried in ``seconds``, where the provider says it: Gemini in a
        ``RetryInfo`` detail of its body (it sends no ``Retry-After``), the others in a
        ``retry-after`` header."""
        if self.backend == "gemini":
            return Reply(429, google_error(429, "slow down", f"{seconds}s"), dict(JSON))
        return self.error(429, {"retry-after": str(seconds)})


SUCCESS = {
    "ollama": "ollama/chat_nonstream_200.json",
    "openai": f"openai/{OPENAI.success}",
    "anthropic": f"anthropic/{ANTHROPIC.success}",
    "gemini": "gemini/generate_200.json",
}
#: Each backend's recorded stream: its events (lines) are what a stream's chunks come of.
STREAM_SUCCESS = {
    "ollama": "ollama/chat_stream_200.ndjson",
    "openai": "openai/chat_stream_200.sse",
    "anthropic": "anthropic/messages_stream_200.sse",
    "gemini": "gemini/stream_200.sse",
}


def gemini_endpoints() -> tuple[str, str]:
    """Where the gemini backend posts for its default model: whole calls, and streams (the fake
    server matches the path without the stream's ``?alt=sse``)."""
    from chatplug.backends.gemini import GeminiBackend

    model = f"/v1beta/models/{GeminiBackend.default_model}"
    return f"{model}:generateContent", f"{model}:streamGenerateContent"


def open_site(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A fake server for ``backend``, its address in the environment, ``LLM_BACKEND`` set, and the
    backend loaded (its SDK imported: a first use is not what these tests time)."""
    server = FakeServer()
    stream_endpoint = None
    if backend == "ollama":
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        endpoint = "/api/chat"
    elif backend == "gemini":
        monkeypatch.setenv("GEMINI_BASE_URL", server.url)
        monkeypatch.setenv("GEMINI_API_KEY", "gemini-deadline-key")  # the backend needs one, even here
        for variable in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION"):
            monkeypatch.delenv(variable, raising=False)  # the SDK's own, which would win
        endpoint, stream_endpoint = gemini_endpoints()
    else:
        provider = OPENAI if backend == "openai" else ANTHROPIC
        monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
        endpoint = provider.endpoint
    monkeypatch.setenv("LLM_BACKEND", backend)
    manager = plugins()
    manager.load()
    manager.backends.get(backend)
    try:
        yield Site(backend, server, endpoint, stream_endpoint)
    finally:
        chatplug.close()
        server.close()


@pytest.fixture(params=BACKENDS)
def site(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    yield from open_site(request.param, monkeypatch)


def call(mode: str, **kwargs: object) -> tuple[LLMResponse, float]:
    """One call in ``mode`` (a whole sync or async call, or a sync stream read to its end), and
    the seconds it took."""
    start = time.monotonic()
    if mode == "sync":
        response = chatplug.generate_completion_sync("hi", **kwargs)
    elif mode == "async":
        response = asyncio.run(chatplug.generate_completion_async("hi", **kwargs))
    elif mode == "stream":
        stream = chatplug.stream_completion_sync("hi", **kwargs)
        for _ in stream:
            pass
        response = stream.response
    else:

        async def read() -> LLMResponse:
            async with chatplug.stream_completion_async("hi", **kwargs) as chunks:
                async for _ in chunks:
                    pass
            return chunks.response

        response = asyncio.run(read())
    return response, time.monotonic() - start


def timeout_of(seconds: str, monkeypatch: pytest.MonkeyPatch, retries: str | None = None) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", seconds)
    if retries is not None:
        monkeypatch.setenv("LLM_MAX_RETRIES", retries)
        settings.max_retries = None  # the suite's 0 gives way to the environment


# -- servers that never finish ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dripped", ["body", "headers"])
def test_a_drip_ends_at_the_deadline(site: Site, mode: str, dripped: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 0.3 s keeps every read alive; the call still ends at its 1 s deadline."""
    site.succeed(drip=0.3, drip_headers=dripped == "headers")
    timeout_of("1", monkeypatch)
    response, elapsed = call(mode)
    assert response.error_kind is ErrorKind.TIMEOUT, response.error
    assert "1 s" in (response.error or "")
    assert elapsed < 1 + SLACK


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_never_answers_fails_at_the_deadline(
    site: Site, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.route(Reply(hang=True))
    timeout_of("1", monkeypatch)
    response, elapsed = call(mode)
    assert response.error_kind is ErrorKind.TIMEOUT, response.error
    assert elapsed < 1 + SLACK


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retries_share_the_deadline(site: Site, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt hangs: with retries left, the call still ends at its deadline."""
    site.route(Reply(hang=True))
    timeout_of("1", monkeypatch, retries="3")
    response, elapsed = call(mode)
    assert response.error_kind is ErrorKind.TIMEOUT, response.error
    assert elapsed < 1 + SLACK


def test_a_per_call_timeout_is_the_deadline(site: Site) -> None:
    site.succeed(drip=0.2)
    response, elapsed = call("sync", timeout=0.5)
    assert response.error_kind is ErrorKind.TIMEOUT
    assert elapsed < 0.5 + SLACK


# -- Retry-After longer than the deadline ---------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retry_after_past_the_deadline_fails_at_once(site: Site, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait the provider asks for (Gemini's RetryInfo, the others' Retry-After) cannot fit."""
    site.route(site.rate_limited(15))
    timeout_of("1", monkeypatch, retries="1")
    response, elapsed = call(mode)
    assert response.error_kind is ErrorKind.RATE_LIMIT, response.error
    assert response.retry_after == 15
    assert len(site.server.requests) == 1  # no second attempt: it could not fit
    assert elapsed < 1


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("value", ["3600", "inf", "Thu, 01 Jan 2099 00:00:00 GMT"])
def test_a_retry_after_of_forever_fails_at_once(
    site: Site, mode: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour where the provider says it; a forever only a ``retry-after`` header can say (on
    Gemini, a gateway's: the backend reads the header as well as the body's RetryInfo)."""
    site.route(site.rate_limited(3600) if value == "3600" else site.error(429, {"retry-after": value}))
    timeout_of("1", monkeypatch, retries="1")
    response, elapsed = call(mode)
    assert response.error_kind is ErrorKind.RATE_LIMIT, response.error
    assert response.retry_after is None or (math.isfinite(response.retry_after) and response.retry_after >= 3000)
    assert elapsed < 1


# -- what the deadline leaves alone ----------------------------------------------------------


def test_a_stream_past_its_first_chunk_is_bounded_per_read(site: Site) -> None:
    """A sync stream's deadline bounds the wait for its first chunk; the rest is bounded per read
    by the timeout (as an async stream's is): a stream that goes on past the deadline, each piece
    in time, is read to its end."""
    # The whole body takes ~1.5 s to arrive, each byte well within the 1 s timeout.
    site.route_stream(site.stream_reply(drip=1.5 / len(site.stream_success)))
    response, elapsed = call("stream", timeout=1)
    assert response.success, (response.error, elapsed)
    assert response.content


def test_calls_that_succeed_are_unchanged(site: Site) -> None:
    site.succeed()
    for mode in ("sync", "async"):  # (streams: their own tests run on the same clients)
        response, _ = call(mode, timeout=5)
        assert response.success, (mode, response.error)


# -- the toolkit piece, as a plugin uses it ----------------------------------------------------


@pytest.fixture
def dripping() -> Iterator[FakeServer]:
    server = FakeServer()
    server.route("GET", "/slow", Reply(200, b"x" * 1000, drip=0.1))
    server.route("GET", "/fast", Reply(200, b"ok"))
    yield server
    server.close()


def test_deadline_client_bounds_a_plain_httpx_client(dripping: FakeServer) -> None:
    with deadline_client(httpx.Client(timeout=30)) as client:
        start = time.monotonic()
        with deadline_scope(time.monotonic() + 0.5), pytest.raises(httpx.ReadTimeout):
            client.get(f"{dripping.url}/slow")
        assert time.monotonic() - start < 0.5 + SLACK
        assert client.get(f"{dripping.url}/fast").text == "ok"  # outside a scope: as before
        with deadline_scope(None):
            assert client.get(f"{dripping.url}/fast").text == "ok"


def test_a_deadline_is_per_thread(dripping: FakeServer) -> None:
    """Two threads share one client: the one whose deadline passes fails, the other's call,
    under no deadline, is not cut."""
    outcome: dict[str, object] = {}
    client = deadline_client(httpx.Client(timeout=30))

    def bounded() -> None:
        with deadline_scope(time.monotonic() + 0.3):
            try:
                client.get(f"{dripping.url}/slow")
            except httpx.TimeoutException as exc:
                outcome["bounded"] = exc

    def free() -> None:
        dripping.route("GET", "/short", Reply(200, b"abcdefgh", drip=0.1))
        outcome["free"] = client.get(f"{dripping.url}/short").text

    threads = [threading.Thread(target=bounded), threading.Thread(target=free)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    client.close()
    assert isinstance(outcome["bounded"], httpx.ReadTimeout)
    assert outcome["free"] == "abcdefgh"


def test_a_connect_past_the_deadline_fails_at_once(dripping: FakeServer) -> None:
    with (
        deadline_client(httpx.Client()) as client,
        deadline_scope(time.monotonic() - 1),
        pytest.raises(httpx.ConnectTimeout),
    ):
        client.get(f"{dripping.url}/fast")


def test_deadline_client_wraps_proxy_mounts_and_refuses_other_objects() -> None:
    client = httpx.Client(mounts={"http://example.invalid": httpx.HTTPTransport()})
    assert deadline_client(client) is client
    assert all(type(t).__name__ == "DeadlineTransport" for t in [client._transport, *client._mounts.values()])
    assert deadline_transport(client._transport) is client._transport  # never wrapped twice
    client.close()
    with pytest.raises(TypeError):
        deadline_client(object())


def test_first_within_sets_the_deadline_only_for_the_first_item() -> None:
    from chatplug._http.deadline import DEADLINE

    seen: list[float | None] = []

    def items() -> Iterator[int]:
        for i in range(3):
            seen.append(DEADLINE.get())
            yield i

    lazy = first_within(items(), 42.0)
    assert seen == []  # nothing is read until the iteration starts
    assert list(lazy) == [0, 1, 2]
    assert seen == [42.0, None, None]
    assert list(first_within(iter(()), 1.0)) == []
    assert DEADLINE.get() is None


def test_the_sync_deadline_is_set_only_during_an_attempt(site: Site) -> None:
    """The pipeline sets the contextvar around ``complete()`` and resets it after."""
    from chatplug._http.deadline import DEADLINE

    site.succeed()
    response, _ = call("sync", timeout=5)
    assert response.success
    assert DEADLINE.get() is None


# -- async deadlines: asyncio.timeout, or its equivalent on Python 3.10 -------------------------
#
# Every async attempt (a whole call, a stream's opening and first chunk, each call of a batch or a
# tool run) goes through the pipeline's ``within``: these run on every Python chatplug supports.


def timeout_class() -> type:
    """The class of the async deadline's context manager on this Python."""
    if sys.version_info >= (3, 11):
        return asyncio.Timeout
    from chatplug._http.deadline import _Timeout

    return _Timeout


class TimerLoop(asyncio.SelectorEventLoop):
    """An event loop that keeps the timers of the async deadlines (``call_at``, where ``call_later``
    comes too): when each ends, and its handle."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[tuple[float, asyncio.TimerHandle]] = []

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        if isinstance(getattr(callback, "__self__", None), timeout_class()):
            self.timers.append((when, handle))
        return handle


def on_loop(main: Callable[[TimerLoop], Coroutine[Any, Any, T]], loop: TimerLoop | None = None) -> tuple[T, TimerLoop]:
    loop = loop or TimerLoop()
    try:
        return loop.run_until_complete(main(loop)), loop
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class Yielding(chatplug.ChatBackend):
    """Answers after giving the loop a turn: concurrent calls are all in flight at once."""

    default_model = "m"
    capabilities = frozenset({"tools"})  # (answers without calling any)

    def complete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        return chatplug.ChatResult(content="hi", model=request.model)

    async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        await asyncio.sleep(0)
        return self.complete(request)


class Hanging(Yielding):
    """Never answers, whole or streamed: each attempt ends at its deadline."""

    async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        await asyncio.Event().wait()
        raise AssertionError("not reached")

    async def astream(self, request: chatplug.ChatRequest) -> AsyncIterator[chatplug.ChatChunk]:
        await asyncio.Event().wait()
        yield chatplug.ChatChunk(text="not reached")


class HangingOpener(Hanging):
    """A stream opened by an ``async def`` that returns its iterator, and never does."""

    async def astream(self, request: chatplug.ChatRequest) -> AsyncIterator[chatplug.ChatChunk]:  # type: ignore[override]
        await asyncio.Event().wait()
        raise AssertionError("not reached")


class OwnTimeout(Yielding):
    """Times out on its own, well before the call's deadline, as a plugin built on
    ``asyncio.wait_for`` or aiohttp does: with ``asyncio.TimeoutError``, which Python 3.10 does
    not make the built-in ``TimeoutError``."""

    async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        raise asyncio.TimeoutError("no answer in 5 s")

    async def astream(self, request: chatplug.ChatRequest) -> AsyncIterator[chatplug.ChatChunk]:
        raise asyncio.TimeoutError("no answer in 5 s")
        yield chatplug.ChatChunk(text="not reached")


@pytest.fixture
def yielding() -> Iterator[str]:
    with (
        registered("yielding", Yielding),
        registered("hanging", Hanging),
        registered("hanging-opener", HangingOpener),
        registered("own-timeout", OwnTimeout),
    ):
        yield "yielding"


async def one_call(path: str, backend: str, **options: Any) -> LLMResponse:
    """One call to ``backend`` on an async ``path``: the response (of a batch, its first; of a
    tool run, its last)."""

    def tool(city: str) -> str:
        """The weather in ``city``."""
        return "sunny"

    if path == "call":
        return await chatplug.generate_completion_async("hi", backend=backend, **options)
    if path == "messages":
        messages = [{"role": "user", "content": "hi"}]
        return await chatplug.generate_completion_with_messages_async(messages, backend=backend, **options)
    if path == "stream":
        async with chatplug.stream_completion_async("hi", backend=backend, **options) as stream:
            async for _ in stream:
                pass
        return stream.response
    if path == "batch":
        return (await chatplug.generate_batch_async(["hi", "ho"], backend=backend, **options))[0]
    assert path == "tools"
    return (await chatplug.run_tools_async("hi", [tool], backend=backend, **options)).response


ASYNC_PATHS = ("call", "messages", "stream", "batch", "tools")


@pytest.mark.parametrize(
    ("path", "backend"), [*((path, "hanging") for path in ASYNC_PATHS), ("stream", "hanging-opener")]
)
def test_an_async_attempt_that_never_answers_ends_at_its_deadline(yielding: str, path: str, backend: str) -> None:
    start = time.monotonic()
    response = asyncio.run(one_call(path, backend, timeout=0.3, max_retries=0))
    assert response.error_kind is ErrorKind.TIMEOUT, response.error
    assert "within 0.3 s (the call's deadline)" in (response.error or "")
    assert time.monotonic() - start < 0.3 + SLACK


@pytest.mark.parametrize("path", ASYNC_PATHS)
def test_an_attempts_own_asyncio_timeout_error_is_a_timeout_and_falls_back(yielding: str, path: str) -> None:
    """A plugin's own ``asyncio.TimeoutError`` is a timeout on every Python (not a plugin's bug):
    the call falls back, as on any timeout with time left."""
    response = asyncio.run(one_call(path, "own-timeout", timeout=30, max_retries=0, fallbacks=["yielding"]))
    assert response.success, response.error
    assert response.content == "hi" and response.attempts == 2
    [first] = response.attempt_errors
    assert first.startswith("own-timeout") and "did not answer" in first


def test_an_async_plugin_stream_keeps_one_context_across_its_chunks() -> None:
    """The first chunk is awaited under the deadline in the caller's own task, as the rest are: a
    contextvar the stream sets before its first chunk it resets after its last (on Python 3.10,
    ``asyncio.wait_for`` read the first chunk in a task of its own, and the reset failed)."""
    import contextvars

    span: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)
    seen: list[str | None] = []

    class Traced(Yielding):
        async def astream(self, request: chatplug.ChatRequest) -> AsyncIterator[chatplug.ChatChunk]:
            token = span.set("call")
            try:
                yield chatplug.ChatChunk(text="a")
                seen.append(span.get())
                yield chatplug.ChatChunk(text="b")
            finally:
                span.reset(token)

    async def read() -> tuple[list[str], LLMResponse]:
        async with chatplug.stream_completion_async("Hi", backend="traced", timeout=30) as stream:
            texts = [chunk.text async for chunk in stream]
        return texts, stream.response

    with registered("traced", Traced):
        texts, response = asyncio.run(read())
    assert response.success, response.error
    assert texts == ["a", "b"] and seen == ["call"]


def test_an_async_stream_past_its_first_chunk_is_bounded_per_read(site: Site) -> None:
    """Past its first chunk, an async stream is bounded per read by the timeout (the deadline
    bounds the wait for the first): a server that stops sending ends it as a timeout. The server
    sends the recorded stream but its last event, then nothing."""
    site.route_stream(site.stream_reply(pieces=site.stream_events()[:-1], hold=True))

    async def read() -> tuple[list[str], LLMResponse]:
        async with chatplug.stream_completion_async("hi", timeout=0.5, max_retries=0) as stream:
            texts = [chunk.text async for chunk in stream]
        return texts, stream.response

    texts, response = asyncio.run(read())
    assert "".join(texts)
    assert response.error_kind is ErrorKind.TIMEOUT, response.error


def test_the_deadline_ends_its_block_with_the_builtin_timeout_error() -> None:
    from chatplug._http.deadline import TIMEOUTS, timeout

    async def main(loop: TimerLoop) -> str:
        with pytest.raises(TimeoutError) as raised:
            async with timeout(0.05):
                await asyncio.Event().wait()
        assert type(raised.value) is TimeoutError and TimeoutError in TIMEOUTS and asyncio.TimeoutError in TIMEOUTS
        task = asyncio.current_task()
        assert task is not None
        if sys.version_info >= (3, 11):
            assert task.cancelling() == 0  # the cancellation it made is taken back
        async with timeout(10):  # ends in time: nothing happens
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # and the task is not cancelled again
        return "went on"

    result, loop = on_loop(main)
    assert result == "went on"
    assert len(loop.timers) == 2 and all(handle.cancelled() for _, handle in loop.timers[1:])


def test_a_block_that_swallows_the_deadline_leaves_an_outer_one_working() -> None:
    """Like asyncio.timeout: an outer deadline still ends in TimeoutError, not in a
    CancelledError that would end the task."""
    from chatplug._http.deadline import timeout

    async def swallows() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    async def main(loop: TimerLoop) -> str:
        with pytest.raises(TimeoutError):
            async with timeout(0.2):
                async with timeout(0.01):
                    await swallows()
                await asyncio.Event().wait()
        return "went on"

    result, _ = on_loop(main)
    assert result == "went on"


@pytest.mark.parametrize(
    "deadline_passed",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                sys.version_info < (3, 11),
                reason="3.10's tasks do not count their cancellations (Task.cancelling() is 3.11's): one that "
                "comes in the same turn of the loop as the deadline is taken for it (see _deadline._Timeout)",
            ),
        ),
    ],
)
def test_a_cancellation_from_elsewhere_stays_a_cancellation(deadline_passed: bool) -> None:
    """Cancelled by its caller, a task in a deadline sees CancelledError, not TimeoutError, even
    when its deadline fires before the task runs again."""
    from chatplug._http.deadline import timeout

    async def waits(seconds: float, started: asyncio.Event) -> None:
        async with timeout(seconds):
            started.set()
            await asyncio.Event().wait()

    async def main(loop: TimerLoop) -> tuple[str, bool]:
        started = asyncio.Event()
        task = asyncio.create_task(waits(0.01 if deadline_passed else 10, started))
        await started.wait()
        [(when, timer)] = loop.timers
        if deadline_passed:  # cancelled in the same turn as the deadline fires, before the task runs
            loop.call_at(when, task.cancel)
        else:
            loop.call_soon(task.cancel)
        try:
            await task
            outcome = "finished"
        except asyncio.CancelledError:
            outcome = "cancelled"
        except TimeoutError:
            outcome = "timeout"
        return outcome, timer.cancelled()

    (outcome, cancelled), _ = on_loop(main)
    assert outcome == "cancelled"
    assert cancelled is not deadline_passed  # a timer that fired is not cancelled; the other one is


@pytest.mark.parametrize("seconds", [1e308, math.inf])
def test_a_timeout_too_large_for_the_clock_is_kept_as_it_is(yielding: str, seconds: float) -> None:
    from chatplug._http.deadline import timeout

    async def main(loop: TimerLoop) -> LLMResponse:
        async with timeout(seconds):
            await asyncio.sleep(0)
        return await chatplug.generate_completion_async("hi", backend=yielding, timeout=1e308)

    response, _ = on_loop(main)
    assert response.success, response.error


def test_the_deadline_timers_end_with_their_attempts(yielding: str) -> None:
    """A timer per attempt, cancelled when the attempt ends: none piles up in the loop."""

    async def main(loop: TimerLoop) -> list[LLMResponse]:
        calls = (chatplug.generate_completion_async(f"hi {i}", backend=yielding, timeout=600) for i in range(100))
        return await asyncio.gather(*calls)

    responses, loop = on_loop(main)
    assert all(r.success for r in responses)
    assert len(loop.timers) == 100 and all(handle.cancelled() for _, handle in loop.timers)


def test_an_async_call_sets_nothing_on_its_loop(yielding: str) -> None:
    """The deadline keeps nothing on the loop object: a loop that takes no attribute runs calls
    as any other, and is freed once closed."""
    import gc
    import weakref

    from .test_clients import SealedLoop

    async def main() -> list[ErrorKind | None]:
        calls = [chatplug.generate_completion_async("hi", backend=yielding, timeout=t) for t in (0.5, 30, 600)]
        calls.append(chatplug.generate_completion_async("hi", backend="hanging", timeout=0.05, max_retries=0))
        # (Only the kinds: from Python 3.13, a failed response's error holds the frames it was raised
        # through, and theirs callers', the loop's among them.)
        return [response.error_kind for response in await asyncio.gather(*calls)]

    loop = SealedLoop()
    before = dict(vars(loop))
    try:
        kinds = loop.run_until_complete(main())
        assert kinds == [None, None, None, ErrorKind.TIMEOUT]
        assert set(vars(loop)) == set(before)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


def test_a_closed_loop_is_not_kept_alive_by_its_deadline_timers() -> None:
    import gc
    import weakref

    from chatplug._http.deadline import timeout

    async def main(loop: TimerLoop) -> None:
        async with timeout(30):
            await asyncio.sleep(0)

    _, loop = on_loop(main)
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


# -- a backend that blocks: the pipeline keeps the deadline for it --------------------------------

#: How long the blocking backend below holds a call at the most (its thread is released by the test
#: well before): a call that returns before this did not wait for the backend.
HELD = 20.0


class Blocking(chatplug.ChatBackend):
    """A plugin whose sync ``complete()`` and ``stream()`` block until the test releases them, as
    a backend built on a client without deadlines does with a server that never answers."""

    default_model = "m"
    release = threading.Event()
    finished = threading.Event()

    def complete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        self.release.wait(HELD)
        self.finished.set()
        return chatplug.ChatResult(content="late", model=request.model)

    async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
        await asyncio.Event().wait()  # cancelled at the deadline
        raise AssertionError("not reached")

    def stream(self, request: chatplug.ChatRequest) -> Iterator[chatplug.ChatChunk]:
        self.release.wait(HELD)
        self.finished.set()
        yield chatplug.ChatChunk(text="late")
        yield chatplug.ChatChunk(text=" again")


@pytest.fixture
def blocking() -> Iterator[type[Blocking]]:
    Blocking.release, Blocking.finished = threading.Event(), threading.Event()
    with registered("blocking", Blocking):
        yield Blocking
        Blocking.release.set()


def test_a_sync_call_to_a_blocking_plugin_ends_at_its_deadline(blocking: type[Blocking]) -> None:
    start = time.monotonic()
    response = chatplug.generate_completion_sync("Hi", backend="blocking", timeout=0.5, max_retries=0)
    elapsed = time.monotonic() - start
    assert response.error_kind is ErrorKind.TIMEOUT, response
    assert "within 0.5 s" in (response.error or "")
    assert elapsed < HELD / 2  # returned at the deadline, not when the plugin did
    assert not blocking.finished.is_set()  # the plugin's work is still under way, left behind
    blocking.release.set()
    assert blocking.finished.wait(HELD)  # it finishes in the background; its result is dropped


def test_a_blocking_plugin_that_answers_in_time_is_waited_for(blocking: type[Blocking]) -> None:
    blocking.release.set()
    response = chatplug.generate_completion_sync("Hi", backend="blocking", timeout=30)
    assert response.success and response.content == "late"


def test_a_plugins_own_errors_and_context_cross_the_worker_thread() -> None:
    """The attempt runs in another thread with the caller's context (the deadline the toolkit
    reads), and the plugin's exception reaches the caller as its own."""
    from chatplug._http.deadline import DEADLINE

    seen: list[float | None] = []

    class Failing(chatplug.ChatBackend):
        default_model = "m"

        def complete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
            seen.append(DEADLINE.get())
            raise chatplug.RateLimitError("slow down", retry_after=7.0)

        async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
            raise AssertionError("not called")

    with registered("failing", Failing):
        response = chatplug.generate_completion_sync("Hi", backend="failing", timeout=30, max_retries=0)
    assert response.error_kind is ErrorKind.RATE_LIMIT and response.retry_after == 7.0
    assert seen and seen[0] is not None and seen[0] > time.monotonic()


def test_an_async_call_to_a_plugin_that_never_answers_ends_at_its_deadline(blocking: type[Blocking]) -> None:
    response = asyncio.run(chatplug.generate_completion_async("Hi", backend="blocking", timeout=0.3, max_retries=0))
    assert response.error_kind is ErrorKind.TIMEOUT, response


def test_a_sync_stream_of_a_blocking_plugin_ends_at_its_deadline(blocking: type[Blocking]) -> None:
    start = time.monotonic()
    with chatplug.stream_completion_sync("Hi", backend="blocking", timeout=0.5, max_retries=0) as stream:
        chunks = list(stream)
    assert chunks == []
    assert stream.response.error_kind is ErrorKind.TIMEOUT, stream.response
    assert time.monotonic() - start < HELD / 2
    blocking.release.set()
    assert blocking.finished.wait(HELD)


def test_a_sync_stream_of_a_plugin_in_time_is_read_whole(blocking: type[Blocking]) -> None:
    blocking.release.set()
    with chatplug.stream_completion_sync("Hi", backend="blocking", timeout=30) as stream:
        texts = [chunk.text for chunk in stream]
    assert texts == ["late", " again"] and stream.response.content == "late again"


def test_a_plugin_stream_keeps_one_context_across_its_chunks() -> None:
    """The first chunk is read in a worker thread, the rest on the caller's: a contextvar the
    stream sets before its first chunk (a tracing span) it resets after its last, in the same context."""
    import contextvars

    span: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)
    seen: list[str | None] = []

    class Traced(chatplug.ChatBackend):
        default_model = "m"

        def complete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: chatplug.ChatRequest) -> chatplug.ChatResult:
            raise NotImplementedError

        def stream(self, request: chatplug.ChatRequest) -> Iterator[chatplug.ChatChunk]:
            token = span.set("call")
            try:
                yield chatplug.ChatChunk(text="a")
                seen.append(span.get())
                yield chatplug.ChatChunk(text="b")
            finally:
                span.reset(token)

    with registered("traced", Traced), chatplug.stream_completion_sync("Hi", backend="traced", timeout=30) as stream:
        texts = [chunk.text for chunk in stream]
    assert stream.response.success, stream.response.error
    assert texts == ["a", "b"] and seen == ["call"]
    assert span.get() is None  # the caller's own context is untouched
