from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import chatplug
from chatplug import settings

from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI, provider_server

OLLAMA_JSON = {"Content-Type": "application/json; charset=utf-8"}
#: Ollama's recorded stream, its lines, and the text of each.
NDJSON = {"Content-Type": "application/x-ndjson"}
BODY = fixture("ollama/chat_stream_200.ndjson")
LINES = BODY.splitlines(keepends=True)
PIECES = ["Ray", "leigh", " scattering", ":", " air", " molecules", " scatter", " blue", " light", " more", "."]


def streamed(body: bytes | None = None, *, pieces: list[bytes] | None = None, **flags: bool) -> Reply:
    """An NDJSON reply sent as chunked pieces (one per line unless ``pieces`` says otherwise)."""
    split = pieces if pieces is not None else (body or BODY).splitlines(keepends=True)
    return Reply(200, b"", dict(NDJSON), pieces=split, **flags)


@pytest.fixture
def quiet_hangups(ollama: FakeServer) -> None:
    """A client that stops reading early (after a bad line, a break) is what some tests want:
    the fake server's last flush then fails with a broken pipe, which socketserver would print."""
    httpd = ollama._httpd
    handle_error = httpd.handle_error

    def handle(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            handle_error(request, client_address)

    httpd.handle_error = handle  # type: ignore[method-assign]


@contextmanager
def registered(name: str, backend: type[chatplug.ChatBackend]) -> Iterator[None]:
    """``backend`` installed under ``name`` by an in-process plugin, for the block."""

    class Plugin:
        @chatplug.hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], chatplug.ChatBackend]], None]) -> None:
            register(name, backend)

    plugin = chatplug.register_plugin(Plugin(), f"{name}-plugin")
    try:
        yield
    finally:
        chatplug.unregister_plugin(plugin)


def ollama_reply(name: str, status: int = 200) -> Reply:
    """A reply with an Ollama fixture body and the headers the real server sends."""
    return Reply(status, fixture(f"ollama/{name}"), dict(OLLAMA_JSON))


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from chatplug's defaults, whatever the machine's environment says."""
    for var in (
        "LLM_BACKEND",
        "LLM_MODEL_NAME",
        "LLM_TEMPERATURE",
        "LLM_MAX_TOKENS",
        "LLM_TIMEOUT",
        "LLM_MAX_RETRIES",
        "LLM_FALLBACKS",
        "LLM_FALLBACK_ON",
        "LLM_CACHE",
        "LLM_CACHE_TTL",
        "LLM_RATE_LIMIT",
        "LLM_RATE_LIMIT_REDIS",
        "LLM_ASYNC_TRANSPORT",
        "OLLAMA_HOST",
        "OLLAMA_API_KEY",
        "CHATPLUG_PLUGINS",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "ANTHROPIC_AUTH_TOKEN",
        "GEMINI_API_KEY",
        "GEMINI_BASE_URL",
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_GENAI_HTTP_CLIENT",
        "GOOGLE_GENAI_USE_ENTERPRISE",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
    ):
        monkeypatch.delenv(var, raising=False)
    settings.reset()
    # A failure stays one failure, at once: the retry policy (2 retries with backoff by default)
    # has tests of its own, which set max_retries themselves.
    settings.max_retries = 0
    yield
    chatplug.close()


@pytest.fixture
def ollama(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """A fake Ollama server answering /api/chat with the recorded success body; OLLAMA_HOST points at it."""
    server = FakeServer()
    server.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    yield server
    chatplug.close()
    server.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on it: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def chatplug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="chatplug")
    return caplog


# -- the openai and anthropic backends: their real SDKs over a socket (see providers.py) ---


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    yield from provider_server(monkeypatch, OPENAI)


@pytest.fixture
def anthropic_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    yield from provider_server(monkeypatch, ANTHROPIC)


class Observed:
    """An observer plugin that records every request and response it is shown."""

    def __init__(self) -> None:
        self.requests: list[chatplug.ChatRequest] = []
        self.responses: list[chatplug.LLMResponse] = []

    @chatplug.hookimpl
    def on_request(self, request: chatplug.ChatRequest) -> None:
        self.requests.append(request)

    @chatplug.hookimpl
    def on_response(self, request: chatplug.ChatRequest | None, response: chatplug.LLMResponse) -> None:
        self.responses.append(response)


@pytest.fixture
def observed() -> Iterator[Observed]:
    """An ``Observed`` registered in-process for the test."""
    seen = Observed()
    name = chatplug.register_plugin(seen, "test-observer")
    yield seen
    chatplug.unregister_plugin(name)
