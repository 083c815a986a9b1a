"""Issue 11's defects, each reproduced against a loopback server doing exactly what the issue
describes, through the real SDKs over sockets: one test (or parametrised family) per defect,
named by its number. Each failed before the fix it guards.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse, generate_completion_async, generate_completion_sync

from .childproc import python
from .fakeserver import FakeServer, Reply
from .providers import ANTHROPIC, OPENAI, Provider, both, provider_server

OLLAMA = Provider(
    "ollama", "/api/chat", "OLLAMA_HOST", "", "OLLAMA_API_KEY",
    "x-request-id", "chat_nonstream_200.json",
    lambda kind, message: {"error": message},
)  # fmt: skip
PROVIDERS = [OLLAMA, OPENAI, ANTHROPIC]
IDS = [p.backend for p in PROVIDERS]

#: "A few KB": the most an error message may be, whatever the server sent.
FEW_KB = 4500


@pytest.fixture(params=PROVIDERS, ids=IDS)
def provider(request: pytest.FixtureRequest) -> Provider:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """A fake ``provider`` (its recorded success), selected, its address in its variable."""
    yield from provider_server(monkeypatch, provider)


def failed_as(responses: list[LLMResponse], kind: ErrorKind) -> None:
    for response in responses:
        assert not response.success
        assert response.error_kind is kind, response.error
        assert response.error is not None and len(response.error) <= FEW_KB


def no_nan(text: str) -> Any:
    """``text`` parsed as strict JSON: NaN and Infinity refused."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


# -- 4: retry_after -----------------------------------------------------------------------


@pytest.mark.parametrize("header", ["nan", "inf", "-inf", "-5.0", "NaN", "1e400"])
def test_4_retry_after_that_is_no_finite_wait_is_none(provider: Provider, server: FakeServer, header: str) -> None:
    """Defect 4: a ``Retry-After`` of nan, inf or -5.0 passed straight into ``retry_after``,
    so ``to_dict()`` was not strict JSON."""
    provider.route(server, provider.error(429, "rate_limit_error", "Slow down.", {"retry-after": header}))
    responses = both("Hi")
    failed_as(responses, ErrorKind.RATE_LIMIT)
    for response in responses:
        assert response.retry_after is None
        json.dumps(response.to_dict(), allow_nan=False)  # raises ValueError on NaN / inf


def test_4_ollama_reads_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 4: Ollama's ``retry_after`` was always None, even with ``Retry-After: 1``."""
    for server in provider_server(monkeypatch, OLLAMA):
        OLLAMA.route(server, OLLAMA.error(429, "", "too many requests", {"Retry-After": "1"}))
        for response in both("Hi"):
            assert response.error_kind is ErrorKind.RATE_LIMIT, response.error
            assert response.retry_after == 1.0


def test_4_cli_json_prints_no_nan() -> None:
    """Defect 4: ``chatplug --json`` printed ``NaN`` for a ``Retry-After: nan``."""
    server = FakeServer()
    try:
        OLLAMA.route(server, OLLAMA.error(429, "", "slow down", {"Retry-After": "nan"}))
        proc = python(
            "import sys; from chatplug.cli import main; sys.exit(main(['--json', 'Hi']))",
            OLLAMA_HOST=server.url,
            LLM_MAX_RETRIES="0",
        )
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    data = no_nan(proc.stdout)
    assert data["error_kind"] == "rate_limit" and data["retry_after"] is None


# -- 5: provider faults reported as a plugin's bug -----------------------------------------


def test_5_deeply_nested_json_is_a_server_fault(provider: Provider, server: FakeServer) -> None:
    """Defect 5: a reply of JSON nested 100,000 deep (RecursionError in the parser) was ``plugin``."""
    depth = 100_000
    provider.route(server, provider.reply(b'{"a":' * depth + b"1" + b"}" * depth))
    failed_as(both("Hi"), ErrorKind.SERVER)
    provider.route(server, provider.reply(b"[" * depth + b"]" * depth))
    failed_as(both("Hi"), ErrorKind.SERVER)


def test_5_ollama_redirect_loop_is_no_plugin_fault(ollama: FakeServer) -> None:
    """Defect 5: Ollama following a redirect loop (httpx's TooManyRedirects) was ``plugin``."""
    ollama.route("POST", "/api/chat", Reply(307, b"", {"Location": "/api/chat"}))
    responses = both("Hi")
    for response in responses:
        assert response.error_kind not in (ErrorKind.PLUGIN, None), response.error
        assert "redirect" in (response.error or "")
    assert 2 < len(ollama.requests) < 100


def test_5_anthropic_stop_that_is_no_text_is_invalid_input(anthropic_server: FakeServer) -> None:
    """Defect 5: anthropic ``stop=5`` was ``plugin``, where it is bad input."""
    failed_as(both("Hi", stop=5), ErrorKind.INVALID_INPUT)
    assert anthropic_server.requests == []


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "ok \ud83d"])
def test_5_lone_surrogate_is_invalid_input_everywhere(provider: Provider, server: FakeServer, text: str) -> None:
    """Defect 5: a lone surrogate in an Ollama prompt came back as ``server`` (openai and anthropic
    said ``invalid_input``): every backend refuses it, before sending anything."""
    failed_as(both(text), ErrorKind.INVALID_INPUT)
    failed_as(both([{"role": "system", "content": text}, {"role": "user", "content": "Hi"}]), ErrorKind.INVALID_INPUT)
    parts = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    failed_as([chatplug.generate_completion_with_messages_sync(parts)], ErrorKind.INVALID_INPUT)
    assert "surrogate" in (generate_completion_sync(text).error or "")
    assert server.requests == []


# -- 6: error text without a size limit -----------------------------------------------------


def test_6_a_50_mb_html_error_body_gives_a_short_error_and_log_line(
    provider: Provider, server: FakeServer, chatplug_log: pytest.LogCaptureFixture
) -> None:
    """Defect 6: a 50 MB HTML 500 body became a 52-million-character ``error`` and warning line."""
    body = b"<html><body>" + b"<p>Internal Server Error</p>" * (50 * 2**20 // 28) + b"</body></html>"
    assert len(body) > 50 * 10**6
    server.route("POST", provider.endpoint, Reply(500, body, {"Content-Type": "text/html"}))
    responses = both("Hi")
    failed_as(responses, ErrorKind.SERVER)
    for response in responses:
        assert "cut" in (response.error or "")
        assert len(json.dumps(response.to_dict())) < 2 * FEW_KB
    lines = [r.getMessage() for r in chatplug_log.records if r.name == "chatplug" and r.levelno >= logging.WARNING]
    assert len(lines) == 2 and all(len(line) < FEW_KB + 100 for line in lines)


@pytest.mark.parametrize(
    "arguments",
    [
        {"temperature": "x" * 2**20},
        {"max_tokens": "9" * 2**20},
        {"backend": "b" * 2**20},
        {"model_name": "ollama:" + " " * 2**20},
        {"top_k": {"x" * 2**20}},
        {"timeout": "x" * 2**20},
        {"fallbacks": "nope" * 2**18},
        {"tool_choice": "t" * 2**20},
    ],
    ids=lambda a: next(iter(a)),
)
def test_6_a_1_mb_bad_argument_is_not_echoed_whole(arguments: dict[str, Any]) -> None:
    """Defect 6: a 1 MB bad argument was echoed whole in the error."""
    ((name, value),) = arguments.items()
    huge = value if isinstance(value, str) else repr(value)
    response = generate_completion_sync("Hi", **arguments)
    assert response.error_kind in (ErrorKind.INVALID_INPUT, ErrorKind.CONFIG), response.error
    assert len(response.error or "") <= FEW_KB and huge not in (response.error or "")
    assert name.rstrip("s") in (response.error or "") or name == "backend"
    for response in [
        generate_completion_sync("x" * 2**20 + "\ud800"),
        chatplug.generate_completion_with_messages_sync([{"role": "r" * 2**20, "content": "Hi"}]),
    ]:
        assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
        assert len(response.error or "") < 1000


# -- 7: event loops kept alive, sockets left open ----------------------------------------


def test_7_repeated_asyncio_run_keeps_no_loop_alive(closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 7: 200 ``asyncio.run()`` of one failed ollama call left 200 more live loops."""
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port}")
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one() -> LLMResponse:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await generate_completion_async("Hi")

    asyncio.run(one())  # the backend's first use, outside the count
    gc.collect()
    before = sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())
    for _ in range(200):
        assert asyncio.run(one()).error_kind is ErrorKind.CONNECTION
    gc.collect()
    assert sum(ref() is not None for ref in loops) == 0
    after = sum(isinstance(o, asyncio.AbstractEventLoop) for o in gc.get_objects())
    assert after <= before


def open_fds() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
def test_7_manual_event_loops_leave_no_socket_open(provider: Provider, server: FakeServer) -> None:
    """Defect 7: 30 ``new_event_loop() / run_until_complete() / close()`` cycles left 30 sockets
    open (until ``chatplug.close()``), with "unclosed transport" warnings when collected."""
    assert generate_completion_sync("Hi").success  # sync client and first use outside the count
    gc.collect()
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(30):
            loop = asyncio.new_event_loop()
            try:
                response = loop.run_until_complete(generate_completion_async("Hi"))
            finally:
                loop.close()
            assert response.success, response.error
            del loop
        gc.collect()
        assert open_fds() <= before + 1  # each loop's client closed with its loop
        chatplug.close()
        gc.collect()
        assert open_fds() <= before
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []
    assert len(server.requests) == 31


# -- 8: a key rotated while calls run -------------------------------------------------------


def test_8_rotating_the_key_under_8_threads_fails_no_call(
    provider: Provider, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 8: changing the key while calls ran failed some (EBADF, "client has been closed")
    and stalled one for the whole LLM_TIMEOUT."""
    timeout = 10.0
    monkeypatch.setenv("LLM_TIMEOUT", str(timeout))
    monkeypatch.setenv(provider.key_env, "sk-rotating-key-0")
    calls, threads = 15, 8
    results: list[tuple[bool, str | None, float]] = []
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        for _ in range(calls):
            start = time.monotonic()
            response = generate_completion_sync("Hi")
            with lock:
                results.append((response.success, response.error, time.monotonic() - start))

    def rotate() -> None:
        n = 0
        while not done.is_set():
            n += 1
            os.environ[provider.key_env] = f"sk-rotating-key-{n}"
            time.sleep(0.02)

    rotator = threading.Thread(target=rotate)
    rotator.start()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
    finally:
        done.set()
        rotator.join()
    assert len(results) == calls * threads
    failures = [error for ok, error, _ in results if not ok]
    assert failures == []
    assert max(seconds for _, _, seconds in results) < timeout / 2  # none stalled for the timeout
    keys = {
        value
        for r in server.requests
        for name, value in r.headers.items()
        if name.lower() in ("authorization", "x-api-key")
    }
    assert len(keys) > 1  # the key did change under the calls


# -- 9: a password in a base URL ------------------------------------------------------------

PASSWORD = "pw-SECRET-userinfo-9931"


@pytest.mark.parametrize("answer", ["error", "refused", "bad-url"])
def test_9_a_password_in_the_base_url_is_never_shown(
    provider: Provider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    closed_port: int,
    answer: str,
) -> None:
    """Defect 9: ``http://alice:pw@host`` in OPENAI_BASE_URL, ANTHROPIC_BASE_URL or OLLAMA_HOST
    was printed in errors and warning logs."""
    server = FakeServer()
    try:
        provider.route(server, provider.reply(b"<html>Bad gateway " + PASSWORD.encode() + b"</html>", 502))
        port = {"error": server.port, "refused": closed_port, "bad-url": "99999"}[answer]
        monkeypatch.setenv(provider.base_url_env, f"http://alice:{PASSWORD}@127.0.0.1:{port}{provider.base_url_path}")
        monkeypatch.setenv("LLM_BACKEND", provider.backend)
        caplog.set_level(logging.DEBUG, logger="chatplug")
        responses = both("Hi")
        for response in responses:
            assert not response.success
            shown = (
                str(response), repr(response), json.dumps(response.to_dict()), repr(response.exception),
                str(response.exception), repr(response.exception.args if response.exception else ()),
            )  # fmt: skip
            assert not any(PASSWORD in text for text in shown), response.error
            assert "alice" in (response.error or "") or answer == "bad-url" or provider is ANTHROPIC
        assert PASSWORD not in caplog.text
    finally:
        chatplug.close()
        server.close()


# -- 10: misleading words -----------------------------------------------------------------


class RawServer:
    """A loopback server that reads a request and answers with ``raw`` bytes, then closes (or
    resets) the connection: a truncated reply, or a reset before any."""

    def __init__(self, raw: bytes, *, reset: bool = False) -> None:
        self.raw, self.reset = raw, reset
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    conn.sendall(self.raw)
                    if self.reset:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


TRUNCATED = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id": "chatcmpl-1", '


@pytest.mark.parametrize("fault", ["reset", "truncated", "reset-mid-body"])
def test_10_a_broken_connection_does_not_say_could_not_connect(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Defect 10: a connection reset or a truncated reply on openai/anthropic said "could not
    connect ... check that the server runs"."""
    raw = {"reset": b"", "truncated": TRUNCATED, "reset-mid-body": TRUNCATED}[fault]
    server = RawServer(raw, reset=fault != "truncated")
    try:
        monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
        monkeypatch.setenv("LLM_BACKEND", provider.backend)
        for response in both("Hi"):
            assert response.error_kind in (ErrorKind.CONNECTION, ErrorKind.SERVER), response.error
            error = response.error or ""
            assert "could not connect" not in error and "server runs" not in error, error
            assert "ollama serve" not in error, error
            assert "broke" in error or "could not read" in error or "ended" in error, error
    finally:
        chatplug.close()
        server.close()


def test_10_a_dns_failure_is_named(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 10: a DNS failure was never named as one (Ollama's said "Start it with `ollama serve`")."""
    monkeypatch.setenv(provider.base_url_env, "http://nonexistent.invalid" + provider.base_url_path)
    monkeypatch.setenv("LLM_BACKEND", provider.backend)
    for response in both("Hi"):
        assert response.error_kind is ErrorKind.CONNECTION, response.error
        assert "resolve the host name" in (response.error or ""), response.error
        assert "ollama serve" not in (response.error or "")


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"temprature": 0}, "misspelt 'temperature'"),
        ({"max_token": 5}, "misspelt 'max_tokens'"),
        ({"modelname": "x"}, "misspelt 'model_name'"),
        ({"max_tokens": 10**40}, "max_tokens must be a whole number from 1 to"),
        ({"max_tokens": 2**31}, "max_tokens must be a whole number from 1 to"),
    ],
    ids=["temprature", "max_token", "modelname", "max_tokens-1e40", "max_tokens-2**31"],
)
def test_10_misspelt_keywords_and_huge_max_tokens_are_refused(
    provider: Provider, server: FakeServer, arguments: dict[str, Any], words: str
) -> None:
    """Defect 10: ``temprature=0`` was dropped silently by openai/anthropic and forwarded to
    Ollama as an option; ``max_tokens=10**40`` was sent as is."""
    responses = both("Hi", **arguments)
    failed_as(responses, ErrorKind.INVALID_INPUT)
    for response in responses:
        assert words in (response.error or ""), response.error
    assert server.requests == []


# -- 11: OLLAMA_HOST malformed at start-up, or not http ---------------------------------------


@pytest.mark.parametrize("host", ["http://localhost:abc", "localhost:99999", "http://[::1"])
def test_11_ollama_host_malformed_when_the_process_starts_is_a_config_error(host: str) -> None:
    """Defect 11: a malformed OLLAMA_HOST already set at start-up made ``import ollama`` raise
    ValueError, and every call failed as ``plugin``."""
    proc = python(
        """
        import asyncio, json, chatplug
        for response in (chatplug.generate_completion_sync("Hi"),
                         asyncio.run(chatplug.generate_completion_async("Hi"))):
            print(json.dumps([response.error_kind, response.error]))
        """,
        OLLAMA_HOST=host,
        LLM_MAX_RETRIES="0",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        kind, error = json.loads(line)
        assert kind == "config", error
        assert "OLLAMA_HOST" in error


@pytest.mark.parametrize("host", ["ftp://x", "ftp://127.0.0.1:11434", "file:///tmp/x"])
def test_11_ollama_host_that_is_no_http_is_a_config_error(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    """Defect 11: ``OLLAMA_HOST=ftp://x`` came back as ``connection`` (UnsupportedProtocol)."""
    monkeypatch.setenv("OLLAMA_HOST", host)
    for response in both("Hi"):
        assert response.error_kind is ErrorKind.CONFIG, response.error
        assert "OLLAMA_HOST" in (response.error or "")
