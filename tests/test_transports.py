"""The async transport: every built-in backend's async client on aiohttp by default
(``LLM_ASYNC_TRANSPORT=default``: the SDK's own), behaving as the SDK's own transport does:
the same errors, proxies and TLS settings from the environment, and every aiohttp session
closed with its loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse, generate_completion_async, settings, stream_completion_async
from chatplug._http import transports
from chatplug.toolkit import aiohttp_transport, async_transport_options, use_aiohttp

from .conftest import ollama_reply
from .fakeserver import FakeServer, Reply
from .providers import ANTHROPIC, OPENAI, Provider, headers_of

SRC = Path(__file__).resolve().parents[1] / "src"
TRANSPORTS = ["aiohttp", "default"]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of the requests sent through an aiohttp transport."""
    urls: list[str] = []
    original = transports._Transport.handle_async_request

    async def counted(self: Any, request: Any) -> Any:
        urls.append(str(request.url))
        return await original(self, request)

    monkeypatch.setattr(transports._Transport, "handle_async_request", counted)
    return urls


def ask(**options: Any) -> LLMResponse:
    async def go() -> LLMResponse:
        return await generate_completion_async("Hi", **options)

    return asyncio.run(go())


# -- on aiohttp by default, on the SDK's own transport on demand ------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ollama_async_goes_through_the_setting(
    ollama: FakeServer, sent: list[str], transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ASYNC_TRANSPORT", transport)
    response = ask()
    assert response.success, response.error
    assert len(sent) == (1 if transport == "aiohttp" else 0)
    chatplug.generate_completion_sync("Hi")  # sync calls never go on aiohttp
    assert len(sent) == (1 if transport == "aiohttp" else 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC], ids=lambda p: p.backend)
def test_stainless_async_goes_through_the_setting(
    provider: Provider, transport: str, sent: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeServer()
    provider.route(server, provider.reply(provider.success))
    monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
    monkeypatch.setenv(provider.key_env, "sk-test")
    settings.async_transport = transport  # in code, as the environment
    try:
        response = ask(backend=provider.backend)
        assert response.success, response.error
        assert len(sent) == (1 if transport == "aiohttp" else 0)
    finally:
        chatplug.close()
        server.close()


def test_local_async_client_goes_through_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatplug.backends import local

    async def kinds() -> list[str]:
        names = []
        for transport in TRANSPORTS:
            monkeypatch.setenv("LLM_ASYNC_TRANSPORT", transport)
            client = local._async_client()
            names.append(type(client._transport).__name__)
            assert client._mounts == {}  # no proxy from the environment for loopback calls
            await client.aclose()
        return names

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert asyncio.run(kinds()) == ["AiohttpTransport", "AsyncHTTPTransport"]


def test_the_setting_is_checked(ollama: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(chatplug.ConfigError, match="aiohttp or default"):
        settings.async_transport = "curl"
    settings.async_transport = " Default "
    assert settings.async_transport == "default" and not use_aiohttp()
    settings.async_transport = None
    monkeypatch.setenv("LLM_ASYNC_TRANSPORT", "urllib3")
    response = ask()
    assert response.error_kind is ErrorKind.CONFIG and "LLM_ASYNC_TRANSPORT" in (response.error or "")


def test_without_aiohttp_the_default_falls_back_and_an_explicit_choice_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transports, "aiohttp_installed", lambda: False)
    assert async_transport_options() == {}
    monkeypatch.setenv("LLM_ASYNC_TRANSPORT", "aiohttp")
    with pytest.raises(chatplug.ConfigError, match=r'pip install "chatplug\[aiohttp\]"'):
        async_transport_options()


def test_importing_chatplug_imports_no_aiohttp() -> None:
    code = "import sys, chatplug, chatplug.toolkit; print('aiohttp' in sys.modules, 'yarl' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    ).stdout
    assert out.split() == ["False", "False"]


# -- the toolkit piece, for plugins ---------------------------------------------------------


@pytest.mark.parametrize("stack", ["httpx", "httpx2"])
def test_a_plugin_client_on_the_toolkit_transport(stack: str, ollama: FakeServer, sent: list[str]) -> None:
    http = __import__(stack)

    async def go() -> tuple[int, bytes, str]:
        async with http.AsyncClient(**async_transport_options(http), timeout=5) as client:
            response = await client.post(f"{ollama.url}/api/chat", json={"model": "m"})
            return response.status_code, response.content, response.headers["content-type"]

    status, body, kind = asyncio.run(go())
    assert status == 200 and body.startswith(b"{") and kind.startswith("application/json")
    assert sent == [f"{ollama.url}/api/chat"]
    recorded = ollama.requests[-1]
    assert recorded.json() == {"model": "m"} and recorded.headers["Content-Type"] == "application/json"


def test_each_request_goes_where_it_is_addressed(ollama: FakeServer) -> None:
    """A client on the transport: each request goes where it is addressed, the same address
    again and again, another between, one with a user and password."""
    ollama.route("POST", "/other", ollama_reply("chat_nonstream_200.json"))
    transport = aiohttp_transport(httpx)

    async def go() -> list[int]:
        async with httpx.AsyncClient(base_url=ollama.url, transport=transport) as client:
            paths = ["/api/chat", "/other", "/api/chat", "/api/chat", f"http://u:p@127.0.0.1:{ollama.port}/other"]
            return [(await client.post(path, json={})).status_code for path in paths]

    assert asyncio.run(go()) == [200] * 5
    assert [r.path for r in ollama.requests] == ["/api/chat", "/other", "/api/chat", "/api/chat", "/other"]
    assert headers_of(ollama.requests[-1])["authorization"] == "Basic dTpw"  # httpx's auth from the URL


@pytest.mark.parametrize("stack", ["httpx", "httpx2"])
@pytest.mark.parametrize("read", ["whole", "streamed and closed early"])
def test_a_response_is_freed_with_its_last_reference_not_by_the_collector(
    stack: str, read: str, ollama: FakeServer
) -> None:
    """The client wraps the transport's stream in one that refers back to its response (a
    cycle). Closed, the response lets go of that wrapper, so nothing a request made waits for
    the garbage collector: at 1,000 requests in flight its collections were a tenth of the CPU."""
    http = __import__(stack)

    async def go() -> None:
        async with http.AsyncClient(**async_transport_options(http), timeout=5) as client:
            await client.post(f"{ollama.url}/api/chat", json={})  # connected, and the first use made
            if read == "whole":
                response = await client.post(f"{ollama.url}/api/chat", json={"model": "m"})
                assert response.json()["done"] is True
            else:
                response = await client.send(client.build_request("POST", f"{ollama.url}/api/chat"), stream=True)
                await response.aclose()
            assert response.is_closed and response.status_code == 200 and response.elapsed.total_seconds() > 0
            freed = weakref.ref(response)
            del response
            assert freed() is None

    gc.collect()
    gc.disable()
    try:
        asyncio.run(go())
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("backend", "call"),
    [("ollama", "async"), ("openai", "async"), ("openai", "sync"), ("anthropic", "async"), ("anthropic", "sync")],
)
def test_a_call_leaves_no_garbage_for_the_collector(
    backend: str, call: str, ollama: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every object a call makes, chatplug's, the SDK's and the HTTP stack's, is freed when the
    call returns: none is left in a reference cycle. Not a sync ollama call: httpx's sync client
    keeps each response in a cycle with its stream, which chatplug leaves to the collector (its
    collections took 1.7% of a call's CPU; breaking the cycle reached into httpx's internals)."""
    if backend != "ollama":
        provider = OPENAI if backend == "openai" else ANTHROPIC
        server = FakeServer()
        provider.route(server, provider.reply(provider.success))
        monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
        monkeypatch.setenv(provider.key_env, "sk-test")

    async def ask_async() -> LLMResponse:
        return await generate_completion_async("Hi", backend=backend)

    def ask() -> LLMResponse:
        if call == "sync":
            return chatplug.generate_completion_sync("Hi", backend=backend)
        return loop.run_until_complete(ask_async())

    loop = asyncio.new_event_loop()
    gc.disable()
    try:
        assert ask().success  # the backend and its client made
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(3):
            assert ask().success
        gc.collect()
        assert [type(thing).__qualname__ for thing in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        loop.close()
        if backend != "ollama":
            chatplug.close()
            server.close()


def test_the_client_follows_redirects_and_keeps_cookies_not_aiohttp(ollama: FakeServer) -> None:
    ollama.route("POST", "/old", Reply(307, b"", {"Location": "/api/chat", "Set-Cookie": "a=1; Path=/"}))

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(**async_transport_options(), follow_redirects=True) as client:
            return await client.post(f"{ollama.url}/old", content=b"{}")

    response = asyncio.run(go())
    assert response.status_code == 200 and [r.status_code for r in response.history] == [307]
    assert ollama.requests[-1].path == "/api/chat" and ollama.requests[-1].headers.get("Cookie") == "a=1"


def test_tls_settings_come_from_the_environment_as_the_stack_reads_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    for http in (httpx, __import__("httpx2")):
        with pytest.raises(OSError) as theirs:
            http.AsyncHTTPTransport()
        with pytest.raises(type(theirs.value)):
            aiohttp_transport(http)
        aiohttp_transport(http, trust_env=False)  # not read then, as by the stack's own
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert aiohttp_transport(httpx)._ssl.cert_store_stats()["x509_ca"] > 0
    assert aiohttp_transport(httpx, verify=False)._ssl.check_hostname is False


def test_one_tls_context_per_configuration_is_shared_by_every_loops_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading the CA certificates takes ~40 ms: each event loop's new clients share the context
    of their configuration; another configuration (or certificate variable) gets its own."""
    import certifi

    monkeypatch.setattr(transports, "_SSL_CONTEXTS", {})
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())

    async def made() -> Any:
        return aiohttp_transport(httpx)._ssl

    first, second = asyncio.run(made()), asyncio.run(made())
    assert first is second and first.verify_mode.name == "CERT_REQUIRED"
    assert aiohttp_transport(httpx, verify=False)._ssl is not first
    assert aiohttp_transport(__import__("httpx2"))._ssl is not first
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where() + " ")  # another file, as far as the key goes
    with pytest.raises(OSError):
        aiohttp_transport(httpx)
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert aiohttp_transport(httpx)._ssl is first


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_proxies_come_from_the_environment(
    transport: str, ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, sent: list[str]
) -> None:
    """HTTP_PROXY sends the request to the proxy (the fake server, answering the absolute URL);
    NO_PROXY sends it straight to a host that does not resolve."""
    ollama.route("POST", "http://ollama.invalid:11434/api/chat", ollama_reply("chat_nonstream_200.json"))
    monkeypatch.setenv("LLM_ASYNC_TRANSPORT", transport)
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.invalid:11434")
    monkeypatch.setenv("HTTP_PROXY", ollama.url)
    response = ask()
    assert response.success, response.error
    assert ollama.requests[-1].path == "http://ollama.invalid:11434/api/chat"
    chatplug.close()
    monkeypatch.setenv("NO_PROXY", "ollama.invalid")
    response = ask()
    assert response.error_kind is ErrorKind.CONNECTION
    assert len(ollama.requests) == 1


def test_proxy_mounts_follow_the_stacks_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal.test")
    options = async_transport_options()
    mounts = options["mounts"]
    assert mounts["all://localhost"] is None and mounts["all://*.internal.test"] is None
    proxy = mounts["https://"]
    assert type(proxy).__name__ == "AiohttpTransport" and proxy._proxy == "http://proxy.test:3128"
    assert proxy._proxy_headers == {"Proxy-Authorization": "Basic dXNlcjpwdw=="}  # user:pw
    assert async_transport_options(trust_env=False)["mounts"] == {}


# -- failures: mapped as the SDK's own transport's ------------------------------------------

FAULTS = {
    "refused": None,
    "timeout": Reply(hang=True),
    "cut-off body": Reply(200, b'{"model": "llama3.2", "message"', {"Content-Type": "application/json"}, truncate=10),
    "reset mid-stream": Reply(200, b"", {"Content-Type": "application/x-ndjson"}, pieces=[b'{"a"'], reset=True),
    "not http": "garbage",
}


def _outcome(server: FakeServer | None, url: str, fault: str, transport: str, stream: bool) -> tuple[Any, ...]:
    os.environ["LLM_ASYNC_TRANSPORT"] = transport
    os.environ["OLLAMA_HOST"] = url

    async def go() -> LLMResponse:
        if stream:
            async with stream_completion_async("Hi", timeout=0.5) as chunks:
                async for _ in chunks:
                    pass
            return chunks.response
        return await generate_completion_async("Hi", timeout=0.5)

    try:
        response = asyncio.run(go())
    finally:
        chatplug.close()
    return response.error_kind, response.error


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_failures_are_the_same_on_both_transports(
    fault: str, stream: bool, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ASYNC_TRANSPORT", "aiohttp")  # restored after the test
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:1")
    reply = FAULTS[fault]
    if fault == "not http":
        import socket
        import threading

        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            for _ in range(2):
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.close()

        threading.Thread(target=answer, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        outcomes = [_outcome(None, url, fault, t, stream) for t in TRANSPORTS]
        listener.close()
    elif reply is None:
        outcomes = [_outcome(None, f"http://127.0.0.1:{closed_port}", fault, t, stream) for t in TRANSPORTS]
    else:
        server = FakeServer()
        server.route("POST", "/api/chat", reply)
        try:
            outcomes = [_outcome(server, server.url, fault, t, stream) for t in TRANSPORTS]
        finally:
            server.close()
    aiohttp, default = outcomes
    assert aiohttp[0] is not None
    # The same kind and words; the class named in parentheses may differ (a peer that sends
    # garbage and hangs up is a ReadError or a RemoteProtocolError, depending on which the
    # client sees first, on either transport).
    assert _without_class(aiohttp) == _without_class(default)


# -- closing: no session left open, nothing logged --------------------------------------------


@pytest.fixture
def asyncio_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield caplog
    gc.collect()
    said = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not said, said


def test_sessions_close_with_their_loops_and_with_chatplug_close(
    ollama: FakeServer, asyncio_log: pytest.LogCaptureFixture, sent: list[str]
) -> None:
    async def calls() -> None:
        assert (await generate_completion_async("Hi")).success
        async with stream_completion_async("Hi") as stream:
            async for _ in stream:
                break

    for _ in range(3):  # repeated asyncio.run()
        asyncio.run(calls())
    loop = asyncio.new_event_loop()  # a hand-made loop, closed without shutdown_asyncgens()
    loop.run_until_complete(calls())
    loop.close()

    async def closed_inside() -> None:
        await calls()
        chatplug.close()
        await asyncio.sleep(0.05)  # the close task runs on this loop

    asyncio.run(closed_inside())
    assert len(sent) == 10


def test_no_aiohttp_warning_under_w_error(ollama: FakeServer) -> None:
    """In a fresh interpreter with every warning an error and asyncio's debug mode: calls on
    repeated asyncio.run(), a hand-made loop and chatplug.close() leave nothing behind."""
    code = textwrap.dedent(
        """
        import asyncio, gc, logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        import chatplug

        async def calls():
            assert (await chatplug.generate_completion_async("Hi")).success
            async with chatplug.stream_completion_async("Hi") as stream:
                async for _ in stream:
                    break

        for _ in range(3):
            asyncio.run(calls())
        loop = asyncio.new_event_loop()
        loop.run_until_complete(calls())
        loop.close()

        async def closed_inside():
            await calls()
            chatplug.close()
            await asyncio.sleep(0.05)

        asyncio.run(closed_inside())
        chatplug.close()
        gc.collect()
        print("done")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OLLAMA_HOST": ollama.url}
    for name in ("LLM_ASYNC_TRANSPORT", "PYTHONASYNCIODEBUG", "PYTHONDEVMODE"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-X", "tracemalloc", "-c", code], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done", proc.stdout
    assert "Unclosed" not in proc.stderr and "unclosed" not in proc.stderr, proc.stderr


def _without_class(outcome: tuple[object, ...]) -> tuple[object, ...]:
    import re

    return tuple(
        re.sub(r"\((ReadError|RemoteProtocolError)\)", "(...)", x) if isinstance(x, str) else x for x in outcome
    )
