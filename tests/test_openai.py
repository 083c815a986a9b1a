"""The openai backend, driving the real openai SDK over a socket against a fake OpenAI API.

What it shares with the anthropic backend is tested by ``StainlessContract`` (providers.py);
this module adds OpenAI's request and reply shapes and its errors.
"""

from __future__ import annotations

import pytest

from chatplug import ChatRequest, ErrorKind, generate_completion_sync
from chatplug._plugins import plugins
from chatplug.backends.openai import OpenAIBackend

from .fakeserver import FakeServer
from .providers import OPENAI, ErrorCase, StainlessContract, both, check_error, check_success, headers_of


class TestOpenAIContract(StainlessContract):
    PROVIDER = OPENAI


def test_success(openai_server: FakeServer) -> None:
    check_success(OPENAI, openai_server, (25, 14), "gpt-4o-mini-2024-07-18", "stop")


def test_request_body_defaults(openai_server: FakeServer) -> None:
    generate_completion_sync("Hello")
    (request,) = openai_server.requests
    assert request.json() == {
        "messages": [{"role": "user", "content": "Hello"}],
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "max_tokens": 500,  # a custom OPENAI_BASE_URL gets the name every compatible server knows
    }
    assert headers_of(request)["authorization"] == "Bearer sk-no-key-needed"  # a placeholder: no key is set


def test_arguments_and_options(openai_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-key")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    responses = both(messages, "qwen2.5-0.5b", 0.0, 64, seed=7, stop=["\n\n"], top_p=0.5)
    assert all(response.success for response in responses)
    expected = {
        "messages": messages,
        "model": "qwen2.5-0.5b",
        "temperature": 0.0,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["\n\n"],
        "top_p": 0.5,
    }
    assert [r.json() for r in openai_server.requests] == [expected, expected]
    assert headers_of(openai_server.requests[0])["authorization"] == "Bearer sk-local-key"


@pytest.mark.parametrize(
    ("base_url", "limit"),
    [
        (None, "max_completion_tokens"),
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("http://127.0.0.1:8080/v1", "max_tokens"),
    ],
)
def test_the_token_limit_name_depends_on_the_host(
    monkeypatch: pytest.MonkeyPatch, base_url: str | None, limit: str
) -> None:
    """OpenAI's own API wants ``max_completion_tokens`` (reasoning models refuse ``max_tokens``);
    shown on the arguments, since a request to api.openai.com cannot be sent here."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    if base_url:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    backend = plugins().backends.get("openai")
    assert isinstance(backend, OpenAIBackend)
    request = ChatRequest(({"role": "user", "content": "Hi"},), "gpt-4o-mini", 0.2, 64, 10.0, backend="openai")
    arguments = backend.arguments(request, backend.connection())
    assert arguments[limit] == 64
    assert len({"max_tokens", "max_completion_tokens"} & arguments.keys()) == 1


# -- errors: the status, the provider's body, the headers the real service sends -----------

MISSING = "gpt-nonexistent"  # the model error_model_not_found_404.json names

LLAMA_CPP_CONTEXT = (
    b'{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
    b'"type":"exceed_context_size_error"}}'
)
BAD_TEMPERATURE = OPENAI.error_json("invalid_request_error", "Invalid 'temperature': above 2.")

ERRORS = [
    ErrorCase(400, BAD_TEMPERATURE, ErrorKind.BAD_REQUEST, ("Invalid 'temperature'",)),
    ErrorCase(401, "error_auth_401.json", ErrorKind.AUTH, ("Incorrect API key", "Check OPENAI_API_KEY")),
    ErrorCase(404, "error_model_not_found_404.json", ErrorKind.NOT_FOUND, (f"name {MISSING!r}",)),
    ErrorCase(429, "error_rate_limit_429.json", ErrorKind.RATE_LIMIT, ("Rate limit reached",), 1),
    ErrorCase(429, "error_quota_429.json", ErrorKind.RATE_LIMIT, ("exceeded your current quota",)),
    ErrorCase(500, "error_server_500.json", ErrorKind.SERVER, ("The server had an error",)),
    ErrorCase(503, "error_overloaded_503.json", ErrorKind.OVERLOADED, ("currently overloaded",)),
    ErrorCase(400, LLAMA_CPP_CONTEXT, ErrorKind.CONTEXT_LENGTH, ("exceeds the available context", "shorten it")),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=str)
def test_errors(
    openai_server: FakeServer, monkeypatch: pytest.MonkeyPatch, chatplug_log: pytest.LogCaptureFixture, case: ErrorCase
) -> None:
    check_error(OPENAI, openai_server, monkeypatch, chatplug_log, case, MISSING)


def test_a_connection_never_shows_its_key() -> None:
    """What a Stainless backend reads from the environment at each call is a named tuple whose
    repr leaves the key and token out."""
    from chatplug.backends._stainless import Connection

    conn = Connection("http://127.0.0.1:1/v1", "sk-secret-key", "OpenAI at http://127.0.0.1:1/v1", "tok-secret")
    assert "secret" not in repr(conn) and "OpenAI at" in repr(conn)
    assert conn.api_key == "sk-secret-key" and conn.auth_token == "tok-secret"
