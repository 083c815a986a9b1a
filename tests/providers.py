"""What the openai and anthropic tests share: each provider's API as the fake server plays it,
checks of success and failure, and ``StainlessContract``, the tests both backends must pass
(run by ``test_openai.py`` and ``test_anthropic.py``)."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

import chatplug
from chatplug import (
    ErrorKind,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    settings,
)
from chatplug._plugins import plugins as _plugins

from .childproc import python
from .fakeserver import FakeServer, Recorded, Reply, fixture

REQUEST_ID = "req_5f0c2a9e7b1d4c38"
#: The tool the recorded requests define, as a caller passes it.
WEATHER = {
    "name": "get_weather",
    "description": "Get the weather in a given city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    },
}


@dataclass(frozen=True)
class Provider:
    """A provider's API as the fake server plays it (see /work/shared/fixtures/INDEX.md): where
    its SDK posts, the env vars that point at it and carry the key, and its wire shapes."""

    backend: str  # chatplug's backend name, and the fixtures' folder
    endpoint: str
    base_url_env: str
    base_url_path: str  # what the SDK's base URL adds to the server's address
    key_env: str
    request_id_header: str  # the real service sends each response's id in it
    success: str  # the recorded success body
    error_body: Callable[[str, str], dict[str, Any]]  # (error type, message) -> the error JSON

    def reply(self, body: str | bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        """``body`` (a fixture name or raw bytes) with ``status``, as the real service sends it."""
        data = fixture(f"{self.backend}/{body}") if isinstance(body, str) else body
        return Reply(
            status, data, {"Content-Type": "application/json", self.request_id_header: REQUEST_ID, **(headers or {})}
        )

    def error_json(self, kind: str, message: str) -> bytes:
        """An error body in the provider's own JSON shape."""
        return json.dumps(self.error_body(kind, message)).encode()

    def error(self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.reply(self.error_json(kind, message), status, headers)

    def route(self, server: FakeServer, *replies: Reply) -> None:
        server.route("POST", self.endpoint, *replies)


OPENAI = Provider(
    "openai", "/v1/chat/completions", "OPENAI_BASE_URL", "/v1", "OPENAI_API_KEY",
    "x-request-id", "chat_nonstream_200.json",
    lambda kind, message: {"error": {"message": message, "type": kind, "param": None, "code": None}},
)  # fmt: skip
ANTHROPIC = Provider(
    "anthropic", "/v1/messages", "ANTHROPIC_BASE_URL", "", "ANTHROPIC_API_KEY",
    "request-id", "messages_nonstream_200.json",
    lambda kind, message: {"type": "error", "error": {"type": kind, "message": message}, "request_id": REQUEST_ID},
)  # fmt: skip


def provider_server(monkeypatch: pytest.MonkeyPatch, provider: Provider) -> Iterator[FakeServer]:
    """A fake ``provider`` answering every chat request with its recorded success body; its
    base URL variable points at it and ``LLM_BACKEND`` selects its backend."""
    server = FakeServer()
    provider.route(server, provider.reply(provider.success))
    monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
    monkeypatch.setenv("LLM_BACKEND", provider.backend)
    yield server
    chatplug.close()
    server.close()


def both(payload: str | list[dict[str, str]], *args: Any, **kwargs: Any) -> list[LLMResponse]:
    """The same call through a sync function and its native async twin: a prompt or messages."""
    if isinstance(payload, str):
        return [
            generate_completion_sync(payload, *args, **kwargs),
            asyncio.run(generate_completion_async(payload, *args, **kwargs)),
        ]
    return [
        generate_completion_with_messages_sync(payload, *args, **kwargs),
        asyncio.run(generate_completion_with_messages_async(payload, *args, **kwargs)),
    ]


def text_reply(provider: Provider, text: str) -> Reply:
    """The provider's recorded plain reply with ``text`` as the model's answer."""
    body = json.loads(fixture(f"{provider.backend}/{provider.success}"))
    if provider is OPENAI:
        body["choices"][0]["message"]["content"] = text
    else:
        body["content"][0]["text"] = text
    return provider.reply(json.dumps(body).encode())


def headers_of(request: Recorded) -> dict[str, str]:
    """A recorded request's headers, names in lower case (the SDKs mix cases)."""
    return {name.lower(): value for name, value in request.headers.items()}


def warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chatplug" and r.levelno >= logging.WARNING]


def assert_failed(responses: list[LLMResponse], kind: ErrorKind, *words: str) -> None:
    """Each response failed with ``kind``, an error naming its backend and saying ``words``,
    and a measured response time."""
    for response in responses:
        assert not response.success and response.content == ""
        assert response.error_kind is kind, response.error
        assert response.error is not None and response.error.startswith(f"{response.backend}: ")
        for word in words:
            assert word in response.error
        assert response.response_time > 0


def check_success(
    provider: Provider, server: FakeServer, tokens: tuple[int, int], model: str, finish_reason: str
) -> None:
    """A sync and an async call, answered with the provider's recorded success, give its text,
    its (prompt, completion) ``tokens`` and their sum, the ``model`` the server reported (not the
    one asked for) and its ``finish_reason``; both were posted to the provider's endpoint."""
    for response in both("Why is the sky blue?"):
        assert response.success, response.error
        assert response.error is None and response.error_kind is None
        assert response.content == "Rayleigh scattering: air molecules scatter blue light more than red."
        assert (response.prompt_tokens, response.completion_tokens) == tokens
        assert response.tokens_used == sum(tokens)
        assert (response.model_used, response.finish_reason) == (model, finish_reason)
        assert response.backend == provider.backend
        assert response.response_time > 0
    assert [(r.method, r.path) for r in server.requests] == [("POST", provider.endpoint)] * 2


#: What ``raise_for_error()`` raises for each kind of HTTP error: the README's table.
RAISED: dict[ErrorKind, type[chatplug.ChatplugError]] = {
    ErrorKind.BAD_REQUEST: chatplug.BadRequestError,
    ErrorKind.CONTEXT_LENGTH: chatplug.ContextLengthExceededError,
    ErrorKind.AUTH: chatplug.AuthenticationError,
    ErrorKind.NOT_FOUND: chatplug.NotFoundError,
    ErrorKind.RATE_LIMIT: chatplug.RateLimitError,
    ErrorKind.SERVER: chatplug.ServerError,
    ErrorKind.OVERLOADED: chatplug.OverloadedError,
}


@dataclass(frozen=True)
class ErrorCase:
    """An error reply (a fixture name or raw bytes, with ``status``) and what chatplug must make
    of it: ``kind`` and ``words`` in the message. ``retry_after``: the seconds a ``retry-after``
    header says, expected back in the response."""

    status: int
    body: str | bytes
    kind: ErrorKind
    words: tuple[str, ...]
    retry_after: int | None = None

    def __str__(self) -> str:  # the test id
        return f"{self.status}-{self.kind.value}" + ("-retry-after" if self.retry_after is not None else "")


def check_error(
    provider: Provider,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    case: ErrorCase,
    model: str,
) -> None:
    """A sync and an async call for ``model`` answered as ``case`` says, with the SDK's retries
    off: each fails with its kind, the status, the request id and its words in the error, logs
    one warning and sends one request; ``raise_for_error()`` raises the kind's exception."""
    monkeypatch.setenv("LLM_MAX_RETRIES", "0")  # 429 and 5xx would be retried, after a wait
    headers = {"retry-after": str(case.retry_after)} if case.retry_after is not None else {}
    provider.route(server, provider.reply(case.body, case.status, headers))
    responses = both("Hi", model)
    assert_failed(responses, case.kind, f"HTTP {case.status}", f"(request id {REQUEST_ID})", *case.words)
    assert len(server.requests) == 2
    assert len(warnings_logged(caplog)) == 2
    for response in responses:
        assert response.model_used == model
        assert response.retry_after == case.retry_after
        with pytest.raises(chatplug.ChatplugError) as raised:
            response.raise_for_error()
        assert type(raised.value) is RAISED[case.kind]  # exactly: a 500 is no OverloadedError
        assert (raised.value.status_code, raised.value.retry_after) == (case.status, case.retry_after)
        assert_nothing_chained(response)


def assert_nothing_chained(response: LLMResponse) -> None:
    """The response's exception holds no SDK exception, which would reach the server's body
    and the request's headers (the key among them)."""
    assert response.exception is not None
    assert response.exception.__cause__ is None and response.exception.__context__ is None


class StainlessContract:
    """What the openai and anthropic backends share (selection, configuration, options,
    transport failures, retries, secrets, client reuse, a missing SDK), tested once for each:
    a test module subclasses this as ``Test...`` with ``PROVIDER`` set."""

    PROVIDER: Provider

    @pytest.fixture
    def server(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
        yield from provider_server(monkeypatch, self.PROVIDER)

    # selection and configuration

    def test_backend_argument_selects_it(self, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("LLM_BACKEND")
        response = generate_completion_sync("Hi", backend=self.PROVIDER.backend)
        assert response.success, response.error
        assert response.backend == self.PROVIDER.backend
        assert len(server.requests) == 1

    def test_model_prefix_selects_it_and_is_stripped(self, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("LLM_BACKEND")
        for response in both("Hi", f"{self.PROVIDER.backend}:house-model-1"):
            assert response.success and response.backend == self.PROVIDER.backend
        assert [r.json()["model"] for r in server.requests] == ["house-model-1"] * 2

    def test_llm_model_name_applies_to_the_selected_backend(
        self, server: FakeServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("LLM_MODEL_NAME", "house-model-2")
        assert generate_completion_sync("Hi").success
        monkeypatch.delenv("LLM_BACKEND")
        monkeypatch.setenv("LLM_MODEL_NAME", f"{self.PROVIDER.backend}:house-model-3")
        assert generate_completion_sync("Hi").backend == self.PROVIDER.backend
        assert [r.json()["model"] for r in server.requests] == ["house-model-2", "house-model-3"]

    def test_backend_default_model_when_none_is_configured(self, server: FakeServer) -> None:
        default = _plugins().backends.get(self.PROVIDER.backend).default_model
        assert default and default != settings.model_name  # its own, not Ollama's llama3.2
        generate_completion_sync("Hi")
        assert server.requests[0].json()["model"] == default

    def test_missing_key_for_the_hosted_service(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LLM_BACKEND", self.PROVIDER.backend)  # no base URL: the hosted service
        assert_failed(both("Hi"), ErrorKind.AUTH, f"{self.PROVIDER.key_env} is not set", self.PROVIDER.base_url_env)

    def test_a_custom_base_url_needs_no_key(self, server: FakeServer) -> None:
        assert all(response.success for response in both("Hi"))
        assert len(server.requests) == 2

    def test_the_key_never_leaks(
        self, server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        secret = "sk-chatplug-SECRET-zebra-4242"
        monkeypatch.setenv(self.PROVIDER.key_env, secret)
        caplog.set_level(logging.DEBUG)  # every logger: chatplug's, the SDK's, httpx's
        self.PROVIDER.route(server, self.PROVIDER.error(401, "authentication_error", f"Bad API key: {secret}."))
        responses = both("Hi")
        assert any(secret in value for value in server.requests[0].headers.values())  # it was sent
        assert_failed(responses, ErrorKind.AUTH, "Bad API key: ***", self.PROVIDER.key_env)  # echoed, masked
        for response in responses:
            shown = (str(response), repr(response), json.dumps(response.to_dict()), repr(response.exception))
            assert not any(secret in text for text in shown)
            assert_nothing_chained(response)
        assert secret not in caplog.text

    def test_provider_variables_are_stripped(self, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        """A key from a Kubernetes secret or ``echo`` ends in a newline, which httpx refuses in a
        header (quoting it in its error); chatplug sends the key without it."""
        monkeypatch.setenv(self.PROVIDER.key_env, "sk-chatplug-key-1234\n")
        monkeypatch.setenv(self.PROVIDER.base_url_env, f" {server.url}{self.PROVIDER.base_url_path}\n")
        assert all(response.success for response in both("Hi"))
        assert [headers_of(r)["authorization"] for r in server.requests] == ["Bearer sk-chatplug-key-1234"] * 2

    @pytest.mark.parametrize("secret", ["sk-SECRET two-words", "sk-SECRET\x1b[0m", "sk-SECRET\u201c", " \n"])
    def test_a_malformed_key_is_a_config_error_that_hides_it(
        self, server: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, secret: str
    ) -> None:
        monkeypatch.setenv(self.PROVIDER.key_env, secret)
        caplog.set_level(logging.DEBUG)
        responses = both("Hi")
        assert_failed(responses, ErrorKind.CONFIG, f"{self.PROVIDER.key_env} contains whitespace")
        for response in responses:
            assert "SECRET" not in repr(response.exception)
        assert "SECRET" not in caplog.text
        assert server.requests == []

    @pytest.mark.parametrize("url", ["127.0.0.1:8080/v1", "http://[::1", "ftp://127.0.0.1/v1", "http://127.0.0.1:99999"])
    def test_a_base_url_that_is_no_http_url_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        monkeypatch.setenv("LLM_BACKEND", self.PROVIDER.backend)
        monkeypatch.setenv(self.PROVIDER.base_url_env, url)
        env = self.PROVIDER.base_url_env
        assert_failed(both("Hi"), ErrorKind.CONFIG, f"{env}={url!r} is not valid: expected a URL like http")

    def test_a_rotated_key_replaces_the_client(self, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each new key reaches the server, and the client made for the old one is dropped and
        closed: rotations leave no connection pools behind."""
        keys = ["sk-rotated-1", "sk-rotated-2", "sk-rotated-3"]
        cache = _plugins().backends.get(self.PROVIDER.backend)._clients  # type: ignore[attr-defined]
        for key in keys:
            monkeypatch.setenv(self.PROVIDER.key_env, key)
            assert generate_completion_sync("Hi").success
            assert len(cache) == 1
        assert [headers_of(r)["authorization"] for r in server.requests] == [f"Bearer {key}" for key in keys]

    # options

    def test_ollama_only_options_are_not_sent(self, server: FakeServer, chatplug_log: pytest.LogCaptureFixture) -> None:
        assert generate_completion_sync("Hi", repeat_penalty=1.1, num_ctx=4096).success
        body = server.requests[0].json()
        assert "repeat_penalty" not in body and "num_ctx" not in body and "options" not in body
        debug = [r.getMessage() for r in chatplug_log.records if r.name == "chatplug" and r.levelno == logging.DEBUG]
        for option in ("repeat_penalty", "num_ctx"):
            assert any(m.startswith(f"{self.PROVIDER.backend}: {option} is not sent") for m in debug), debug

    def test_extra_body_and_extra_headers_pass_through(self, server: FakeServer) -> None:
        assert generate_completion_sync(
            "Hi", extra_body={"cache_prompt": True}, extra_headers={"X-Trace": "t-1"}
        ).success
        assert server.requests[0].json()["cache_prompt"] is True
        assert headers_of(server.requests[0])["x-trace"] == "t-1"

    def test_extra_query_goes_in_the_url_and_the_body_stays_the_requests(self, server: FakeServer) -> None:
        """``create()``'s request options (sent through ``post()``) go where ``create()`` puts
        them: none of them in the body."""
        assert all(r.success for r in both("Hi", extra_query={"trace": "q-1"}, extra_headers={"X-Trace": "t-1"}))
        for request in server.requests:
            assert request.path.endswith("?trace=q-1")
            assert headers_of(request)["x-trace"] == "t-1"
            assert not {"extra_query", "extra_headers", "extra_body", "timeout"} & set(request.json())

    def test_a_json_reply_under_another_content_type_is_read(self, server: FakeServer) -> None:
        """A server that labels its JSON ``text/plain``: the SDK hands over the text, which is read
        as JSON all the same (as the SDK's typed models read it)."""
        self.PROVIDER.route(server, self.PROVIDER.reply(self.PROVIDER.success, headers={"Content-Type": "text/plain"}))
        for response in both("Hi"):
            assert response.success, response.error
            assert response.content and response.tokens_used > 0

    def test_a_reply_that_is_no_json_is_invalid_response(self, server: FakeServer) -> None:
        self.PROVIDER.route(server, self.PROVIDER.reply(b"<html>gateway</html>", headers={"Content-Type": "text/html"}))
        assert_failed(both("Hi"), ErrorKind.SERVER, "sent a reply chatplug could not read")

    @pytest.mark.parametrize("option", [{"model": "other"}, {"messages": []}, {"stream": True}])
    def test_options_chatplug_sets_are_invalid_input(self, server: FakeServer, option: dict[str, Any]) -> None:
        assert_failed(both("Hi", **option), ErrorKind.INVALID_INPUT, f"option {next(iter(option))!r}")
        assert server.requests == []

    def test_arguments_the_sdk_refuses_are_invalid_input(self, server: FakeServer) -> None:
        sdk = self.PROVIDER.backend
        assert_failed(both("Hi", extra_body=5), ErrorKind.INVALID_INPUT, f"the {sdk} SDK refused", "nothing was sent")
        assert server.requests == []

    def test_callers_messages_are_not_mutated(self, server: FakeServer) -> None:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Again"},
        ]
        before = copy.deepcopy(messages)
        assert all(response.success for response in both(messages))
        assert messages == before

    # failures of the transport, the server and the SDK

    def test_connection_refused(
        self, monkeypatch: pytest.MonkeyPatch, closed_port: int, chatplug_log: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("LLM_BACKEND", self.PROVIDER.backend)
        monkeypatch.setenv("LLM_MAX_RETRIES", "0")  # the SDK retries a refused connection too
        monkeypatch.setenv(self.PROVIDER.base_url_env, f"http://127.0.0.1:{closed_port}{self.PROVIDER.base_url_path}")
        assert_failed(both("Hi"), ErrorKind.CONNECTION, "could not connect to", f"127.0.0.1:{closed_port}")
        assert len(warnings_logged(chatplug_log)) == 2

    def test_timeout(
        self, server: FakeServer, monkeypatch: pytest.MonkeyPatch, chatplug_log: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("LLM_TIMEOUT", "0.5")
        monkeypatch.setenv("LLM_MAX_RETRIES", "0")  # the SDK retries a timeout too
        self.PROVIDER.route(server, Reply(hang=True))
        assert_failed(both("Hi"), ErrorKind.TIMEOUT, "did not answer within 0.5 s", "LLM_TIMEOUT")
        assert len(server.requests) == 2
        assert len(warnings_logged(chatplug_log)) == 2

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            (b"<html>502 Bad Gateway</html>", "sent a reply chatplug could not read (JSONDecodeError"),
            (b'{"unexpected": true}', "sent a reply chatplug could not read"),
        ],
        ids=["not-json", "wrong-shape"],
    )
    def test_malformed_reply(self, server: FakeServer, body: bytes, words: str) -> None:
        self.PROVIDER.route(server, self.PROVIDER.reply(body))
        responses = both("Hi")
        assert_failed(responses, ErrorKind.SERVER, words)
        assert len(server.requests) == 2  # a bad body is not retried
        for response in responses:
            with pytest.raises(chatplug.InvalidResponseError):
                response.raise_for_error()

    def test_the_pipeline_retries_and_the_sdk_does_not(
        self, server: FakeServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One retry policy for every backend: the pipeline's (LLM_MAX_RETRIES, default 2), with
        the SDK's own retries off so that they do not stack (each request is the SDK's first)."""
        settings.max_retries = None  # the default, as users have it (conftest sets 0)
        failure = self.PROVIDER.error(500, "api_error", "Internal server error", {"retry-after-ms": "1"})
        self.PROVIDER.route(server, failure)
        responses = both("Hi")
        assert_failed(responses, ErrorKind.SERVER, "HTTP 500", "(3 attempts)")
        assert [r.attempts for r in responses] == [3, 3] and len(responses[0].attempt_errors) == 2
        assert [headers_of(r)["x-stainless-retry-count"] for r in server.requests] == ["0"] * 6

        server.requests.clear()
        self.PROVIDER.route(server, failure, self.PROVIDER.reply(self.PROVIDER.success))
        response = generate_completion_sync("Hi")
        assert response.success and response.attempts == 2  # what a user sees: the retry succeeded
        assert len(server.requests) == 2

        server.requests.clear()
        monkeypatch.setenv("LLM_MAX_RETRIES", "0")
        self.PROVIDER.route(server, failure)
        assert generate_completion_sync("Hi").error_kind is ErrorKind.SERVER
        assert len(server.requests) == 1

    def test_missing_sdk_names_the_install_command(self) -> None:
        name = self.PROVIDER.backend
        proc = python(
            f"""
            import sys
            sys.modules[{name!r}] = None  # `import {name}` now fails, as if it were not installed
            import chatplug
            response = chatplug.generate_completion_sync("Hi", backend={name!r})
            print(response.error_kind)
            print(response.error)
            """
        )
        assert proc.returncode == 0, proc.stderr
        kind, error = proc.stdout.splitlines()
        assert kind == "config"
        assert f'pip install "chatplug[{name}]"' in error

    # client reuse

    def test_sync_client_is_reused(self, server: FakeServer) -> None:
        assert all(generate_completion_sync("Hi").success for _ in range(5))
        assert (len(server.requests), server.connections) == (5, 1)

    def test_async_client_is_reused_within_a_loop_and_survives_new_loops(self, server: FakeServer) -> None:
        async def three() -> list[bool]:
            return [(await generate_completion_async("Hi")).success for _ in range(3)]

        assert asyncio.run(three()) == [True] * 3
        assert server.connections == 1
        assert asyncio.run(three()) == [True] * 3  # a new loop gets a new client, not the dead loop's
        assert (len(server.requests), server.connections) == (6, 2)
