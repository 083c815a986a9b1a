"""The anthropic backend, driving the real anthropic SDK over a socket against a fake Anthropic API.

What it shares with the openai backend is tested by ``StainlessContract`` (providers.py); this
module adds the Messages API's shapes (``system``, alternating turns, ``max_tokens`` always,
``stop_sequences``, no sampling parameters) and Anthropic's errors, 529 among them.
"""

from __future__ import annotations

import logging

import pytest

from chatplug import ErrorKind, generate_completion_sync, generate_completion_with_messages_sync
from chatplug._plugins import plugins

from .childproc import python
from .fakeserver import FakeServer
from .providers import ANTHROPIC, ErrorCase, StainlessContract, both, check_error, check_success, headers_of


class TestAnthropicContract(StainlessContract):
    PROVIDER = ANTHROPIC


def test_success(anthropic_server: FakeServer) -> None:
    check_success(ANTHROPIC, anthropic_server, (18, 17), "claude-sonnet-4-20250514", "stop")  # end_turn, normalised


def test_text_blocks_are_joined(anthropic_server: FakeServer) -> None:
    body = (
        b'{"model":"claude-x","id":"msg_01","type":"message","role":"assistant","content":['
        b'{"type":"thinking","thinking":"hmm","signature":"c2ln"},{"type":"text","text":"Blue "},'
        b'{"type":"text","text":"light."}],"stop_reason":"max_tokens","stop_sequence":null,'
        b'"usage":{"input_tokens":3,"output_tokens":4}}'
    )
    ANTHROPIC.route(anthropic_server, ANTHROPIC.reply(body))
    response = generate_completion_sync("Hi")
    # max_tokens, normalised:
    assert (response.content, response.finish_reason, response.tokens_used) == ("Blue light.", "length", 7)


def test_request_body_defaults(anthropic_server: FakeServer) -> None:
    generate_completion_sync("Hello")
    (request,) = anthropic_server.requests
    assert request.json() == {
        "max_tokens": 500,  # always sent: the Messages API requires it
        "messages": [{"role": "user", "content": "Hello"}],
        "model": plugins().backends.get("anthropic").default_model,
    }
    headers = headers_of(request)
    assert headers["authorization"] == "Bearer sk-ant-no-key-needed"  # a placeholder: no key is set
    assert "anthropic-version" in headers


def test_system_messages_are_joined_and_same_role_turns_merged(anthropic_server: FakeServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Are you there?"},
        {"role": "system", "content": "Answer in French."},
        {"role": "assistant", "content": "Oui."},
        {"role": "assistant", "content": "Bonjour."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert all(response.success for response in both(messages, "claude-x", 0.2, 64))
    expected = {
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "Hi\n\nAre you there?"},
            {"role": "assistant", "content": "Oui.\n\nBonjour."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        "model": "claude-x",
        "system": "Be brief.\n\nAnswer in French.",
    }
    assert [r.json() for r in anthropic_server.requests] == [expected, expected]  # and no temperature


def test_only_system_messages_is_invalid_input(anthropic_server: FakeServer) -> None:
    response = generate_completion_with_messages_sync([{"role": "system", "content": "Be brief."}])
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert "at least one user message" in (response.error or "")
    assert anthropic_server.requests == []


@pytest.mark.parametrize(("stop", "sequences"), [("END", ["END"]), (["\n\n", "User:"], ["\n\n", "User:"])])
def test_stop_becomes_stop_sequences(anthropic_server: FakeServer, stop: str | list[str], sequences: list[str]) -> None:
    assert generate_completion_sync("Hi", stop=stop).success
    body = anthropic_server.requests[0].json()
    assert body["stop_sequences"] == sequences and "stop" not in body


def test_sampling_options_are_not_sent(anthropic_server: FakeServer, chatplug_log: pytest.LogCaptureFixture) -> None:
    """The installed SDK's create() takes no temperature, top_p, top_k or seed: none is sent."""
    assert generate_completion_sync("Hi", temperature=0.2, top_p=0.5, top_k=40, seed=7).success
    assert set(anthropic_server.requests[0].json()) == {"max_tokens", "messages", "model"}
    debug = " ".join(r.getMessage() for r in chatplug_log.records if r.levelno == logging.DEBUG)
    for name in ("temperature", "top_p", "top_k", "seed"):
        assert f"anthropic: {name} is not sent" in debug


def test_auth_token_is_sent_as_a_bearer_token(anthropic_server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "oauth-token-1234")
    assert generate_completion_sync("Hi").success
    headers = headers_of(anthropic_server.requests[0])
    assert headers["authorization"] == "Bearer oauth-token-1234"
    assert "x-api-key" not in headers


# -- errors: the status, the provider's body, the headers the real service sends -----------

MISSING = "claude-nonexistent"  # the model error_model_not_found_404.json names

PROMPT_TOO_LONG = ANTHROPIC.error_json("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum")

ERRORS = [
    ErrorCase(400, "error_bad_request_400.json", ErrorKind.BAD_REQUEST, ("max_tokens: Field",)),
    ErrorCase(401, "error_auth_401.json", ErrorKind.AUTH, ("invalid x-api-key", "Check ANTHROPIC_API_KEY")),
    ErrorCase(404, "error_model_not_found_404.json", ErrorKind.NOT_FOUND, (f"name {MISSING!r}",)),
    ErrorCase(429, "error_rate_limit_429.json", ErrorKind.RATE_LIMIT, ("exceed the rate limit",), 1),
    ErrorCase(500, "error_api_500.json", ErrorKind.SERVER, ("Internal server error",)),
    ErrorCase(529, "error_overloaded_529.json", ErrorKind.OVERLOADED, ("Overloaded", "retry later")),
    ErrorCase(400, PROMPT_TOO_LONG, ErrorKind.CONTEXT_LENGTH, ("prompt is too long",)),
]  # fmt: skip


@pytest.mark.parametrize("case", ERRORS, ids=str)
def test_errors(
    anthropic_server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    chatplug_log: pytest.LogCaptureFixture,
    case: ErrorCase,
) -> None:
    check_error(ANTHROPIC, anthropic_server, monkeypatch, chatplug_log, case, MISSING)


def test_parameters_the_sdk_sends_as_headers_go_as_headers(anthropic_server: FakeServer) -> None:
    """``workspace_id`` and ``user_profile_id`` are ``messages.create()`` parameters that it sends as
    headers; chatplug posts the body itself and sends them as ``create()`` does, a caller's own
    ``extra_headers`` winning."""
    responses = both(
        "Hi", workspace_id="ws-1", user_profile_id="up-1", extra_headers={"anthropic-user-profile-id": "up-2"}
    )
    assert all(response.success for response in responses)
    for request in anthropic_server.requests:
        headers = headers_of(request)
        assert (headers["anthropic-workspace-id"], headers["anthropic-user-profile-id"]) == ("ws-1", "up-2")
        assert not {"workspace_id", "user_profile_id", "extra_headers"} & set(request.json())
    anthropic_server.requests.clear()
    assert all(response.success for response in both("Hi", workspace_id=None))  # None: not sent at all
    for request in anthropic_server.requests:
        assert "anthropic-workspace-id" not in headers_of(request) and "workspace_id" not in request.json()


def test_the_sdks_model_warnings_are_given(anthropic_server: FakeServer) -> None:
    """``messages.create()`` warns of a deprecated model and of ``thinking.type=enabled`` on a
    model that wants ``adaptive``; chatplug, which posts the body itself, warns the same, from the
    SDK's own tables."""
    import anthropic.resources.messages.messages as tables

    deprecated, adaptive = next(iter(tables.DEPRECATED_MODELS)), next(iter(tables.MODELS_TO_WARN_WITH_THINKING_ENABLED))
    with pytest.warns(DeprecationWarning, match=f"The model '{deprecated}' is deprecated"):
        assert generate_completion_sync("Hi", f"anthropic:{deprecated}").success
    with pytest.warns(UserWarning, match="'thinking.type=enabled' is deprecated"):
        thinking = {"type": "enabled", "budget_tokens": 1024}
        assert generate_completion_sync("Hi", f"anthropic:{adaptive}", thinking=thinking).success


def test_the_sdks_opentelemetry_span_is_made(anthropic_server: FakeServer) -> None:
    """anthropic 2.x opens an OpenTelemetry span for each ``messages.create()`` and sends its trace
    context with the request; chatplug's calls, which post the body themselves, get the same (in a
    child process: the tracer provider is global)."""
    proc = python(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        import chatplug

        assert chatplug.generate_completion_sync("Hi").success
        assert asyncio.run(chatplug.generate_completion_async("Hi")).success
        for span in exporter.get_finished_spans():
            print(span.name, span.attributes.get("gen_ai.request.model"))
        """,
        LLM_BACKEND="anthropic", ANTHROPIC_BASE_URL=anthropic_server.url, ANTHROPIC_API_KEY="sk-ant-test",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = anthropic_server.requests[0].json()["model"]
    assert proc.stdout.splitlines() == [f"anthropic.messages.create {model}"] * 2
    assert all("traceparent" in headers_of(request) for request in anthropic_server.requests)
