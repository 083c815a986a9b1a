"""The default backend, driving the real ollama SDK over a socket against a fake Ollama server."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading

import pytest

from chatplug import (
    ErrorKind,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)
from chatplug._plugins import plugins

from .conftest import ollama_reply
from .fakeserver import FakeServer, Reply
from .providers import headers_of

CONTENT = "Rayleigh scattering: air molecules scatter short blue wavelengths of sunlight more than red ones."


def test_success_sync(ollama: FakeServer) -> None:
    response = generate_completion_sync("Why is the sky blue?")
    assert response.success, response.error
    assert response.content == CONTENT
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (31, 19, 50)
    assert response.model_used == "llama3.2"
    assert response.finish_reason == "stop"
    assert response.backend == "ollama"
    assert response.error is None and response.error_kind is None
    assert response.response_time > 0


def test_success_async(ollama: FakeServer) -> None:
    response = asyncio.run(generate_completion_async("Why is the sky blue?"))
    assert response.success, response.error
    assert response.content == CONTENT
    assert response.tokens_used == 50


def test_request_body_defaults(ollama: FakeServer) -> None:
    generate_completion_sync("Hello")
    (request,) = ollama.requests
    assert (request.method, request.path) == ("POST", "/api/chat")
    body = request.json()
    assert body["model"] == "llama3.2"
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert body["stream"] is False
    assert body["options"] == {"temperature": 0.7, "num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}


def test_a_cookie_the_server_sets_goes_back_with_later_requests(ollama: FakeServer) -> None:
    """The backend's clients keep a reply's cookies as the SDK's own would: sent with every later
    request, sync and async."""
    plain = ollama_reply("chat_nonstream_200.json")
    sets_cookie = ollama_reply("chat_nonstream_200.json")
    sets_cookie.headers["Set-Cookie"] = "affinity=node-2"

    def cookies_sent() -> list[str | None]:
        sent = [headers_of(request).get("cookie") for request in ollama.requests]
        ollama.requests.clear()
        return sent

    ollama.route("POST", "/api/chat", plain, sets_cookie, plain)
    assert all(generate_completion_sync("Hi").success for _ in range(3))
    assert cookies_sent() == [None, None, "affinity=node-2"]

    async def three_calls() -> list[LLMResponse]:  # one loop: one async client, with cookies of its own
        return [await generate_completion_async("Hi") for _ in range(3)]

    ollama.route("POST", "/api/chat", plain, sets_cookie, plain)
    assert all(response.success for response in asyncio.run(three_calls()))
    assert cookies_sent() == [None, None, "affinity=node-2"]


def test_a_host_with_a_path_gets_every_call_under_it(ollama: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The address each call goes to is the one the SDK makes of the host and ``/api/chat``, call
    after call, sync and async."""
    ollama.route("POST", "/proxy/ollama/api/chat", ollama_reply("chat_nonstream_200.json"))
    monkeypatch.setenv("OLLAMA_HOST", f"{ollama.url}/proxy/ollama")

    async def two_calls() -> list[LLMResponse]:
        return [await generate_completion_async("Hi") for _ in range(2)]

    assert all(generate_completion_sync("Hi").success for _ in range(2))
    assert all(response.success for response in asyncio.run(two_calls()))
    assert [request.path for request in ollama.requests] == ["/proxy/ollama/api/chat"] * 4


def test_arguments_and_extra_options(ollama: FakeServer) -> None:
    generate_completion_sync(
        "Hello",
        "qwen2.5:0.5b",
        0.0,
        64,
        num_ctx=4096,
        seed=7,
        stop="\n",
        top_p=0.5,
        keep_alive="10m",
        think=False,
        format="json",
    )
    body = ollama.requests[0].json()
    assert body["model"] == "qwen2.5:0.5b"
    assert body["options"] == {
        "temperature": 0.0,
        "num_predict": 64,
        "top_p": 0.5,
        "repeat_penalty": 1.1,
        "num_ctx": 4096,
        "seed": 7,
        "stop": ["\n"],
    }
    assert (body["keep_alive"], body["think"], body["format"]) == ("10m", False, "json")


def test_messages_are_sent_and_not_mutated(ollama: FakeServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    before = copy.deepcopy(messages)
    response = generate_completion_with_messages_sync(messages)
    assert response.success
    assert messages == before
    assert ollama.requests[0].json()["messages"] == before
    asyncio.run(generate_completion_with_messages_async(messages))
    assert messages == before


def test_ollama_host_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    other = FakeServer()
    other.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
    try:
        assert generate_completion_sync("one").success
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{other.port}")  # the SDK's short form
        assert generate_completion_sync("two").success
        assert (len(ollama.requests), len(other.requests)) == (1, 1)
    finally:
        other.close()


def test_sync_client_is_reused(ollama: FakeServer) -> None:
    for _ in range(5):
        assert generate_completion_sync("Hi").success
    assert len(ollama.requests) == 5
    assert ollama.connections == 1


def test_async_client_is_reused_within_a_loop_and_survives_new_loops(ollama: FakeServer) -> None:
    async def three() -> list[bool]:
        return [(await generate_completion_async("Hi")).success for _ in range(3)]

    assert asyncio.run(three()) == [True] * 3
    assert ollama.connections == 1
    # A second asyncio.run has a new loop: it must get a new client, not the dead loop's one.
    assert asyncio.run(three()) == [True] * 3
    assert ollama.connections == 2


def test_async_calls_run_concurrently(ollama: FakeServer) -> None:
    async def many() -> list[bool]:
        results = await asyncio.gather(*(generate_completion_async(f"q{i}") for i in range(10)))
        return [r.success for r in results]

    assert asyncio.run(many()) == [True] * 10
    assert len(ollama.requests) == 10


def test_sync_call_inside_a_running_event_loop(ollama: FakeServer) -> None:
    async def notebook_cell() -> bool:  # what Jupyter does: sync code with a loop running
        return generate_completion_sync("Hi").success

    assert asyncio.run(notebook_cell())


def test_many_threads(ollama: FakeServer) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            ok = generate_completion_sync("Hi").success
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 40
    assert len(ollama.requests) == 40


# -- failures ----------------------------------------------------------------------------


def test_connection_refused(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, chatplug_log: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port}")
    response = generate_completion_sync("Hi")
    assert not response.success
    assert response.error_kind is ErrorKind.CONNECTION
    assert response.error is not None
    assert f"http://127.0.0.1:{closed_port}" in response.error
    assert "ollama serve" in response.error and "OLLAMA_HOST" in response.error
    assert response.response_time > 0
    failures = [r for r in chatplug_log.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1 and "connection" in failures[0].getMessage()


def test_connection_refused_async(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port}")
    response = asyncio.run(generate_completion_async("Hi"))
    assert response.error_kind is ErrorKind.CONNECTION
    assert "ollama serve" in (response.error or "")


def test_model_not_found(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", ollama_reply("error_model_not_found_404.json", 404))
    response = generate_completion_sync("Hi", "nonexistent-model")
    assert response.error_kind is ErrorKind.NOT_FOUND
    assert "'nonexistent-model'" in (response.error or "")
    assert "ollama pull nonexistent-model" in (response.error or "")
    assert response.model_used == "nonexistent-model"
    with pytest.raises(Exception) as raised:
        response.raise_for_error()
    assert type(raised.value).__name__ == "NotFoundError"


@pytest.mark.parametrize(
    ("fixture_name", "status", "kind", "words"),
    [
        ("error_bad_request_400.json", 400, ErrorKind.BAD_REQUEST, "model is required"),
        ("error_auth_401_cloud.json", 401, ErrorKind.AUTH, "OLLAMA_API_KEY"),
        ("error_rate_limit_429.json", 429, ErrorKind.RATE_LIMIT, "HTTP 429"),
        ("error_internal_500.json", 500, ErrorKind.SERVER, "HTTP 500"),
        ("error_server_busy_503.json", 503, ErrorKind.OVERLOADED, "OLLAMA_MAX_QUEUE"),
    ],
)
def test_error_statuses(ollama: FakeServer, fixture_name: str, status: int, kind: ErrorKind, words: str) -> None:
    ollama.route("POST", "/api/chat", ollama_reply(fixture_name, status))
    for response in (generate_completion_sync("Hi"), asyncio.run(generate_completion_async("Hi"))):
        assert not response.success
        assert response.error_kind is kind
        assert words in (response.error or "")
        assert response.exception is not None and response.exception.status_code == status
        # No SDK exception rides along: it would reach the request's headers, the key among them.
        assert response.exception.__cause__ is None and response.exception.__context__ is None
    assert len(ollama.requests) == 2  # the ollama SDK does not retry


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'{"unexpected": true}', b"{trunc"])
def test_malformed_body(ollama: FakeServer, body: bytes) -> None:
    ollama.route("POST", "/api/chat", Reply(200, body, {"Content-Type": "application/json; charset=utf-8"}))
    response = generate_completion_sync("Hi")
    assert not response.success
    assert response.error_kind is ErrorKind.SERVER
    assert "sent a reply chatplug could not read" in (response.error or "")


def test_timeout(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "0.3")
    ollama.route("POST", "/api/chat", Reply(hang=True))
    response = generate_completion_sync("Hi")
    assert response.error_kind is ErrorKind.TIMEOUT
    assert "0.3 s" in (response.error or "") and "LLM_TIMEOUT" in (response.error or "")
    assert response.response_time >= 0.3
    response = asyncio.run(generate_completion_async("Hi"))
    assert response.error_kind is ErrorKind.TIMEOUT


def test_invalid_input_sends_no_request(ollama: FakeServer) -> None:
    response = generate_completion_with_messages_sync([{"role": "robot", "content": "beep"}])
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert ollama.requests == []


def test_json_of_a_failure_is_serialisable(ollama: FakeServer) -> None:
    ollama.route("POST", "/api/chat", ollama_reply("error_internal_500.json", 500))
    data = generate_completion_sync("Hi").to_dict()
    assert json.loads(json.dumps(data))["error_kind"] == "server"


# -- OLLAMA_HOST and OLLAMA_API_KEY --------------------------------------------------------

KEY = "ollama-SECRET-KEY-1234"


def both(prompt: str, **options: object) -> list[LLMResponse]:
    return [generate_completion_sync(prompt, **options), asyncio.run(generate_completion_async(prompt, **options))]


def test_host_and_key_are_stripped(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    """A key from a Kubernetes secret ends in a newline: httpx refused it in the header and its
    error quoted the key. The SDK's short host form ``:port`` keeps working."""
    monkeypatch.setenv("OLLAMA_API_KEY", KEY + "\n")
    monkeypatch.setenv("OLLAMA_HOST", f" :{ollama.port}\n")
    assert all(response.success for response in both("Hi"))
    assert [headers_of(r)["authorization"] for r in ollama.requests] == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("key", [f"{KEY} two", f"{KEY}\x1b[0m", f"{KEY}\u201c", " \n"])
def test_a_malformed_key_is_a_config_error_that_hides_it(
    monkeypatch: pytest.MonkeyPatch, ollama: FakeServer, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", key)
    caplog.set_level(logging.DEBUG)
    for response in both("Hi"):
        assert response.error_kind is ErrorKind.CONFIG
        assert "OLLAMA_API_KEY contains whitespace" in (response.error or "")
        assert "SECRET" not in repr(response.exception)
    assert "SECRET" not in caplog.text
    assert ollama.requests == []


def test_the_key_never_leaks(
    monkeypatch: pytest.MonkeyPatch, ollama: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # every logger: chatplug's, the SDK's, httpx's
    body = json.dumps({"error": f"unauthorized: bad key {KEY}"}).encode()
    ollama.route("POST", "/api/chat", Reply(401, body, {"Content-Type": "application/json; charset=utf-8"}))
    for response in both("Hi"):
        assert response.error_kind is ErrorKind.AUTH
        assert "bad key ***" in (response.error or "")  # echoed by the server, masked
        shown = (str(response), repr(response), json.dumps(response.to_dict()), repr(response.exception))
        assert not any(KEY in text for text in shown)
        assert response.exception is not None
        assert response.exception.__cause__ is None and response.exception.__context__ is None
    assert headers_of(ollama.requests[0])["authorization"] == f"Bearer {KEY}"  # it was sent
    assert KEY not in caplog.text


@pytest.mark.parametrize("host", ["http://[::1", "127.0.0.1:abc", "http://127.0.0.1:99999"])
def test_a_malformed_host_is_a_config_error(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    for response in both("Hi"):
        assert response.error_kind is ErrorKind.CONFIG
        assert f"OLLAMA_HOST={host!r} is not valid" in (response.error or "")


def test_a_rotated_key_replaces_the_client(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    """Each new key reaches the server; the client made for the old one is dropped and closed."""
    keys = [f"{KEY}-{i}" for i in range(3)]
    cache = plugins().backends.get("ollama")._clients  # type: ignore[attr-defined]
    for key in keys:
        monkeypatch.setenv("OLLAMA_API_KEY", key)
        assert generate_completion_sync("Hi").success
        assert len(cache) == 1
    assert [headers_of(r)["authorization"] for r in ollama.requests] == [f"Bearer {key}" for key in keys]


@pytest.mark.parametrize(
    ("option", "words"), [({"format": "xml"}, "format='xml'"), ({"keep_alive": [1]}, "keep_alive=[1]")]
)
def test_options_the_sdk_refuses_are_invalid_input(ollama: FakeServer, option: dict[str, object], words: str) -> None:
    """The SDK validates the request it builds: a refusal is the caller's, not the server's."""
    for response in both("Hi", **option):
        assert response.error_kind is ErrorKind.INVALID_INPUT
        assert words in (response.error or "") and "nothing was sent" in (response.error or "")
    assert ollama.requests == []
