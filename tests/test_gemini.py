"""The gemini backend, driving the real google-genai SDK over a socket against a fake Gemini API
answering with the recorded (and derived) wire bodies of tests/fixtures/gemini/, byte for byte.

What is checked on the wire is what the SDK actually sends (``POST /v1beta/models/{model}:
generateContent`` and ``:streamGenerateContent?alt=sse``, the key in ``x-goog-api-key``); thought
signatures are compared as bytes, since the SDK encodes them again (URL-safe base64).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

import chatplug
import chatplug._pipeline.retry
from chatplug import (
    ChatChunk,
    ErrorKind,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    run_tools_async,
    run_tools_sync,
    settings,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)
from chatplug._plugins import plugins
from chatplug.backends.gemini import GeminiBackend

from .fakeserver import FakeServer, Reply, fixture
from .providers import RAISED, ErrorCase, assert_failed, headers_of, warnings_logged

#: A distinctive fake key: it must reach the server, and never an error, a log line or a repr.
KEY = "AIzaSy-chatplug-FAKE-kiwi-walrus-9731"
PRO = "gemini-3.1-pro-preview"  # the model of the Gemini 3 recordings (their modelVersion)
FLASH = "gemini-2.5-flash"  # the model of the g25_* recordings
JSON_TYPE = {"Content-Type": "application/json; charset=UTF-8"}
SSE_TYPE = {"Content-Type": "text/event-stream"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG64 = base64.b64encode(PNG).decode()
#: Every variable the backend or the SDK reads: each test starts without them.
GOOGLE_VARIABLES = (
    "GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION",
    "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_GEMINI_BASE_URL",
)  # fmt: skip


def recorded(name: str) -> Any:
    return json.loads(fixture(f"gemini/{name}"))


def reply(body: str | bytes | dict[str, Any] | Reply, status: int = 200) -> Reply:
    """A fixture's exact bytes (by name), raw bytes or a JSON body, as Gemini sends them: JSON, or an
    SSE stream (a ``.sse`` fixture, or bytes that start with ``data:``) sent in chunks."""
    if isinstance(body, Reply):
        return body
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    data = fixture(f"gemini/{body}") if isinstance(body, str) else body
    if data.startswith(b"data:"):
        return Reply(status, data, dict(SSE_TYPE), chunked=True)
    return Reply(status, data, dict(JSON_TYPE))


def text_reply(text: str, recording: str = "json_schema_200.json") -> dict[str, Any]:
    """A recorded text reply (signature and all) with ``text`` as the model's."""
    body = recorded(recording)
    body["candidates"][0]["content"]["parts"][0]["text"] = text
    return body  # type: ignore[no-any-return]


def sse(*events: dict[str, Any]) -> bytes:
    """A derived stream: each event as Gemini frames it."""
    return b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in events)


def generate_path(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def stream_path(model: str) -> str:
    return f"/v1beta/models/{model}:streamGenerateContent"


class GeminiServer(FakeServer):
    """The fake Gemini API: ``answer`` scripts whole replies for a model, ``stream`` streamed ones.
    A client that drops a connection it will not reuse (after a reply it could not read) is no
    error of the server's: socketserver would print it (as conftest's ``quiet_hangups`` says)."""

    def __init__(self) -> None:
        super().__init__()
        handle_error = self._httpd.handle_error

        def handle(request: Any, client_address: Any) -> None:
            if not isinstance(sys.exc_info()[1], ConnectionError):
                handle_error(request, client_address)

        self._httpd.handle_error = handle  # type: ignore[method-assign]

    def answer(self, *bodies: str | bytes | dict[str, Any] | Reply, model: str = PRO) -> None:
        self.route("POST", generate_path(model), *map(reply, bodies))

    def stream(self, *bodies: str | bytes | dict[str, Any] | Reply, model: str = PRO) -> None:
        self.route("POST", stream_path(model), *map(reply, bodies))

    def bodies(self) -> list[dict[str, Any]]:
        return [request.json() for request in self.requests]


@pytest.fixture(autouse=True)
def no_google_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in GOOGLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gemini(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiServer]:
    """A fake Gemini answering with the recorded plain replies (whole and streamed, Gemini 3 and
    2.5); GEMINI_BASE_URL points at it, GEMINI_API_KEY is ``KEY`` and LLM_BACKEND selects gemini."""
    server = GeminiServer()
    server.answer("generate_200.json")
    server.stream("stream_200.sse")
    server.answer("g25_generate_200.json", model=FLASH)
    server.stream("g25_stream_200.sse", model=FLASH)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GEMINI_BASE_URL", server.url)
    monkeypatch.setenv("LLM_BACKEND", "gemini")
    yield server
    chatplug.close()
    server.close()


# -- the calls: whole and streamed, sync and async --------------------------------------------

Messages = str | Sequence[dict[str, Any]]


def listed(messages: Messages) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)


def whole_sync(messages: Messages, **options: Any) -> LLMResponse:
    options.setdefault("model_name", PRO)
    return generate_completion_with_messages_sync(listed(messages), **options)


def whole_async(messages: Messages, **options: Any) -> LLMResponse:
    options.setdefault("model_name", PRO)
    return asyncio.run(generate_completion_with_messages_async(listed(messages), **options))


def streamed_sync(messages: Messages, **options: Any) -> tuple[list[ChatChunk], LLMResponse]:
    options.setdefault("model_name", PRO)
    with stream_completion_with_messages_sync(listed(messages), **options) as stream:
        chunks = list(stream)
    return chunks, stream.response


def streamed_async(messages: Messages, **options: Any) -> tuple[list[ChatChunk], LLMResponse]:
    options.setdefault("model_name", PRO)

    async def go() -> tuple[list[ChatChunk], LLMResponse]:
        async with stream_completion_with_messages_async(listed(messages), **options) as stream:
            chunks = [chunk async for chunk in stream]
        return chunks, stream.response

    return asyncio.run(go())


def stream_sync(messages: Messages, **options: Any) -> LLMResponse:
    return streamed_sync(messages, **options)[1]


def stream_async(messages: Messages, **options: Any) -> LLMResponse:
    return streamed_async(messages, **options)[1]


Call = Callable[..., LLMResponse]
Streamed = Callable[..., tuple[list[ChatChunk], LLMResponse]]
WHOLE = pytest.mark.parametrize("call", [whole_sync, whole_async], ids=["sync", "async"])
STREAMED = pytest.mark.parametrize("streamed", [streamed_sync, streamed_async], ids=["stream-sync", "stream-async"])
EVERY = pytest.mark.parametrize(
    "call", [whole_sync, whole_async, stream_sync, stream_async], ids=["sync", "async", "stream-sync", "stream-async"]
)


def is_stream(call: Call) -> bool:
    return call in (stream_sync, stream_async)


# -- thought signatures, compared as bytes ----------------------------------------------------


def base64_bytes(text: str) -> bytes:
    """The bytes of base64 text, standard (as Gemini sends it) or URL-safe (as the SDK does)."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)


def decoded(value: Any) -> Any:
    """``value`` (a request body, or part of one) with each ``thoughtSignature`` as its bytes."""
    if isinstance(value, dict):
        return {key: base64_bytes(item) if key == "thoughtSignature" else decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decoded(item) for item in value]
    return value


#: The recordings' tool, as a caller passes it (a dict), and as a Python function.
WEATHER = {
    "name": "weather",
    "description": "Get weather information for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "the city"}},
        "required": ["location"],
    },
}


def weather(location: str) -> str:
    """Get weather information for a location

    Args:
        location: the city
    """
    return "40 C" if location.startswith("Florence") else "unknown"


# ============================================================================================
# 1. a plain call
# ============================================================================================

GENERATE_REQUEST = recorded("generate_request.json")
SAY_HI = [
    {"role": "system", "content": GENERATE_REQUEST["systemInstruction"]["parts"][0]["text"]},
    {"role": "user", "content": GENERATE_REQUEST["contents"][0]["parts"][0]["text"]},
]
GENERATED = recorded("generate_200.json")["candidates"][0]["content"]["parts"][0]


@WHOLE
def test_a_plain_call_gives_the_recorded_reply(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("generate_200.json", model="gemini-pro-latest")  # an alias: the server names the model
    response = call(SAY_HI, model_name="gemini-pro-latest", temperature=0.3, max_tokens=4000)
    assert response.success, response.error
    assert (response.error, response.error_kind, response.backend) == (None, None, "gemini")
    assert response.content == GENERATED["text"]
    assert response.model_used == PRO  # modelVersion, not the alias asked for
    assert response.finish_reason == "stop"
    assert (response.prompt_tokens, response.completion_tokens, response.reasoning_tokens) == (11, 34 + 222, 222)
    assert response.tokens_used == 267 and response.usage_reported
    assert response.reasoning == "" and response.tool_calls == []
    assert response.attempts == 1 and response.response_time > 0


@WHOLE
def test_the_request_on_the_wire(gemini: GeminiServer, call: Call) -> None:
    assert call(SAY_HI, temperature=0.3, max_tokens=4000).success
    (request,) = gemini.requests
    assert (request.method, request.path) == ("POST", generate_path(PRO))
    assert headers_of(request)["x-goog-api-key"] == KEY
    body = request.json()
    assert body["contents"] == GENERATE_REQUEST["contents"]  # [{"parts": [{"text": ...}], "role": "user"}]
    assert body["systemInstruction"] == GENERATE_REQUEST["systemInstruction"]
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 4000}
    assert set(body) == {"contents", "systemInstruction", "generationConfig"}  # no tools, no toolConfig


def test_backend_argument_selects_gemini(gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_BACKEND")
    response = generate_completion_sync("Say hi in Portuguese", model_name=PRO, backend="gemini")
    assert response.success and response.backend == "gemini"
    assert [r.path for r in gemini.requests] == [generate_path(PRO)]


def test_the_backends_default_model_is_asked_for(gemini: GeminiServer) -> None:
    default = plugins().backends.get("gemini").default_model
    assert default.startswith("gemini-") and default != settings.model_name
    gemini.answer("g25_generate_200.json", model=default)
    response = generate_completion_sync("Hi")
    assert response.success and response.content == "Olá!"
    assert [r.path for r in gemini.requests] == [generate_path(default)]


# ============================================================================================
# 2. streaming
# ============================================================================================

STREAM_EVENTS = [json.loads(line[len(b"data: ") :]) for line in fixture("gemini/stream_200.sse").splitlines() if line]
STREAM_PIECES = [event["candidates"][0]["content"]["parts"][0]["text"] for event in STREAM_EVENTS]
STREAM_SIGNATURE = STREAM_EVENTS[-1]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]


@STREAMED
def test_a_stream_gives_its_pieces_in_order_and_the_final_usage(gemini: GeminiServer, streamed: Streamed) -> None:
    chunks, response = streamed(SAY_HI, temperature=0.3, max_tokens=4000)
    assert response.success, response.error
    assert [chunk.text for chunk in chunks] == [piece for piece in STREAM_PIECES if piece]  # the last one is ""
    assert len(chunks) == 3
    assert response.content == "".join(STREAM_PIECES)
    assert (response.prompt_tokens, response.completion_tokens, response.reasoning_tokens) == (11, 39 + 206, 206)
    assert (response.model_used, response.finish_reason) == (PRO, "stop")
    assert response.time_to_first_token is not None
    assert response.thinking_blocks == [{"type": "thought_signature", "signature": STREAM_SIGNATURE}]
    (request,) = gemini.requests
    path, _, query = request.path.partition("?")
    assert path == stream_path(PRO)
    assert "alt=sse" in query.split("&")
    assert headers_of(request)["x-goog-api-key"] == KEY
    body = request.json()
    assert (body["contents"], body["systemInstruction"]) == (
        GENERATE_REQUEST["contents"],
        GENERATE_REQUEST["systemInstruction"],
    )
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 4000}


def test_stream_completion_with_a_prompt(gemini: GeminiServer) -> None:
    with stream_completion_sync("Hi", model_name=FLASH) as stream:
        assert [chunk.text for chunk in stream] == ["Olá!"]
    assert (stream.response.completion_tokens, stream.response.reasoning_tokens) == (2 + 21, 21)

    async def go() -> LLMResponse:
        async with stream_completion_async("Hi", model_name=FLASH) as astream:
            assert [chunk.text async for chunk in astream] == ["Olá!"]
        return astream.response

    assert asyncio.run(go()).content == "Olá!"
    assert [r.path.partition("?")[0] for r in gemini.requests] == [stream_path(FLASH)] * 2


# ============================================================================================
# 3. usage
# ============================================================================================


@EVERY
def test_thinking_tokens_count_as_completion_and_apart(gemini: GeminiServer, call: Call) -> None:
    response = call("Hi", model_name=FLASH)
    thoughts = 24 if not is_stream(call) else 21  # g25_generate_200.json / g25_stream_200.sse
    assert (response.prompt_tokens, response.completion_tokens) == (11, 2 + thoughts)
    assert response.reasoning_tokens == thoughts
    assert response.tokens_used == 11 + 2 + thoughts


@EVERY
def test_a_reply_without_usage_metadata_is_not_reported(gemini: GeminiServer, call: Call) -> None:
    body = recorded("g25_generate_200.json")
    del body["usageMetadata"]
    gemini.answer(body, model=FLASH)
    gemini.stream(sse(body), model=FLASH)
    response = call("Hi", model_name=FLASH)
    assert response.success and response.content == "Olá!"
    assert response.usage_reported is False
    assert (response.prompt_tokens, response.completion_tokens, response.reasoning_tokens) == (0, 0, 0)


def test_a_reply_cut_at_max_tokens_while_thinking(gemini: GeminiServer) -> None:
    gemini.answer("max_tokens_empty_200.json", model="gemini-3.8-flash")
    response = whole_sync("Hi", model_name="gemini-3.8-flash", max_tokens=64)
    assert response.success, response.error
    assert (response.content, response.finish_reason) == ("", "length")
    assert (response.completion_tokens, response.reasoning_tokens) == (64, 64)


# ============================================================================================
# 4. thinking
# ============================================================================================

THINKING_RESULT = recorded("thinking_result_200.json")["candidates"][0]["content"]["parts"]


@WHOLE
def test_thought_parts_are_reasoning_never_content(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("thinking_result_200.json")
    response = call("Weather in Florence?")
    assert response.success, response.error
    assert response.reasoning == THINKING_RESULT[0]["text"]
    assert response.content == THINKING_RESULT[1]["text"]
    assert "Immediate Thoughts" not in response.content


@STREAMED
def test_streamed_thought_parts_are_reasoning_never_text(gemini: GeminiServer, streamed: Streamed) -> None:
    gemini.stream("g25_thinking_tool_stream_200.sse", model=FLASH)
    events = [json.loads(line[6:]) for line in fixture("gemini/g25_thinking_tool_stream_200.sse").splitlines() if line]
    thought = events[0]["candidates"][0]["content"]["parts"][0]["text"]
    chunks, response = streamed("Weather in Florence?", model_name=FLASH, tools=[WEATHER])
    assert response.success, response.error
    assert [(chunk.text, chunk.reasoning) for chunk in chunks] == [("", thought)]
    assert (response.content, response.reasoning) == ("", thought)
    assert [(call.name, call.arguments) for call in response.tool_calls] == [
        ("weather", {"location": "Florence, Italy"})
    ]


def thinking_config(gemini: GeminiServer) -> list[Any]:
    """The ``thinkingConfig`` of each request: the SDK sends its keys in snake_case (which the API
    takes as it takes camelCase)."""
    return [body["generationConfig"].get("thinkingConfig") for body in gemini.bodies()]


def snake_case(config: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): value for key, value in config.items()}


@EVERY
def test_reasoning_effort_on_gemini_3_is_a_thinking_level(gemini: GeminiServer, call: Call) -> None:
    assert call("Hi", reasoning_effort="high").success
    expected = {"include_thoughts": True, "thinking_level": "HIGH"}
    assert snake_case(recorded("thinking_tool_request.json")["generationConfig"]["thinkingConfig"]) == expected
    assert thinking_config(gemini) == [expected]


@EVERY
def test_reasoning_effort_on_gemini_2_5_is_a_thinking_budget(gemini: GeminiServer, call: Call) -> None:
    assert call("Hi", model_name=FLASH, reasoning_effort="high").success
    assert thinking_config(gemini) == [{"thinking_budget": 24576, "include_thoughts": True}]


@EVERY
def test_a_thinking_level_on_gemini_2_5_is_refused_before_sending(gemini: GeminiServer, call: Call) -> None:
    response = call("Hi", model_name=FLASH, thinking_level="high")
    assert_failed([response], ErrorKind.INVALID_INPUT, "thinking_budget", "not thinking_level")
    assert gemini.requests == []


@EVERY
def test_a_thinking_budget_of_0_asks_for_no_thoughts(gemini: GeminiServer, call: Call) -> None:
    assert call("Hi", model_name=FLASH, thinking_budget=0).success
    assert thinking_config(gemini) == [{"thinking_budget": 0, "include_thoughts": False}]


def test_no_thinking_option_sends_no_thinking_config(gemini: GeminiServer) -> None:
    assert whole_sync("Hi").success
    assert thinking_config(gemini) == [None]


# ============================================================================================
# other options, and the turns sent
# ============================================================================================


@EVERY
def test_generation_options_go_in_the_generation_config(gemini: GeminiServer, call: Call) -> None:
    assert call("Hi", stop="END", top_p=0.5, seed=7, presence_penalty=0.1, num_ctx=4096).success
    (body,) = gemini.bodies()
    assert body["generationConfig"] == {
        "temperature": 0.7,  # chatplug's default
        "maxOutputTokens": 500,
        "stopSequences": ["END"],
        "topP": 0.5,
        "seed": 7,
        "presencePenalty": 0.1,
    }  # and no num_ctx, an Ollama option


def test_turns_of_the_same_role_are_merged_and_system_messages_joined(gemini: GeminiServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Are you there?"},
        {"role": "system", "content": "Answer in Portuguese."},
        {"role": "assistant", "content": "Olá."},
        {"role": "user", "content": "Say hi"},
    ]
    assert whole_sync(messages).success
    (body,) = gemini.bodies()
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in Portuguese."}], "role": "user"}
    assert body["contents"] == [
        {"parts": [{"text": "Hi"}, {"text": "Are you there?"}], "role": "user"},
        {"parts": [{"text": "Olá."}], "role": "model"},
        {"parts": [{"text": "Say hi"}], "role": "user"},
    ]


@EVERY
def test_only_system_messages_are_refused_before_sending(gemini: GeminiServer, call: Call) -> None:
    response = call([{"role": "system", "content": "Be brief."}])
    assert_failed([response], ErrorKind.INVALID_INPUT, "at least one user message")
    assert gemini.requests == []


@WHOLE
def test_an_empty_reply_sent_back_makes_no_empty_turn(gemini: GeminiServer, call: Call) -> None:
    """A reply cut off while thinking has no text: sent back as it came (response.message), it must
    not become a model turn without parts, which Gemini refuses ("contents.parts must not be empty")."""
    gemini.answer("max_tokens_empty_200.json", "generate_200.json")
    first = call("Hi", max_tokens=64)
    assert first.success and first.message == {"role": "assistant", "content": ""}
    assert call([{"role": "user", "content": "Hi"}, first.message, {"role": "user", "content": "Again?"}]).success
    assert all(turn["parts"] for turn in gemini.bodies()[1]["contents"])


# ============================================================================================
# 5. thought signatures across a tool loop
# ============================================================================================

TOOL_REPLY = recorded("tool_200.json")["candidates"][0]["content"]["parts"][0]
TOOL_RESULT_REQUEST = recorded("tool_result_request.json")
FLORENCE = TOOL_RESULT_REQUEST["contents"][0]["parts"][0]["text"]  # "What's the weather in Florence,Italy?"


@WHOLE
def test_a_signed_function_call_keeps_its_signature(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("tool_200.json")
    response = call(FLORENCE, tools=[WEATHER])
    assert response.success, response.error
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("1wzw08fx", "weather", {"location": "Florence, Italy"})
    ]
    assert response.thinking_blocks == [
        {"type": "thought_signature", "signature": TOOL_REPLY["thoughtSignature"], "tool_call_id": "1wzw08fx"}
    ]
    assert response.message["thinking_blocks"] == response.thinking_blocks


@WHOLE
def test_the_signature_goes_back_on_its_function_call(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("tool_200.json", "tool_result_200.json")
    first = call(FLORENCE, tools=[WEATHER])
    history = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": FLORENCE},
        first.message,
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "40 C"},
    ]
    second = call(history, tools=[WEATHER], tool_choice="auto", max_tokens=4000)
    assert second.success, second.error
    assert second.content == "The current weather in Florence, Italy is 40°C."
    sent = gemini.bodies()[1]
    assert decoded(sent["contents"]) == decoded(TOOL_RESULT_REQUEST["contents"])
    assert sent["systemInstruction"] == TOOL_RESULT_REQUEST["systemInstruction"]
    assert sent["toolConfig"] == TOOL_RESULT_REQUEST["toolConfig"]
    function_call = sent["contents"][1]["parts"][0]
    assert base64_bytes(function_call["thoughtSignature"]) == base64_bytes(TOOL_REPLY["thoughtSignature"])


PARALLEL_RESULT_REQUEST = recorded("parallel_tool_result_request.json")
ADD_AND_MULTIPLY = PARALLEL_RESULT_REQUEST["contents"][0]["parts"][0]["text"]
ARITHMETIC = [
    {"name": name, "description": f"{name.capitalize()} two numbers", "parameters": {
        "type": "object", "required": ["a", "b"],
        "properties": {"a": {"type": "integer", "description": "first number"},
                       "b": {"type": "integer", "description": "second number"}},
    }}
    for name in ("add", "multiply")
]  # fmt: skip


@pytest.mark.parametrize("recording", ["parallel_tool_200.json", "thinking_parallel_tool_200.json"])
@WHOLE
def test_only_the_first_of_parallel_calls_is_signed_and_results_go_in_one_turn(
    gemini: GeminiServer, call: Call, recording: str
) -> None:
    gemini.answer(recording, "tool_result_200.json")
    parts = recorded(recording)["candidates"][0]["content"]["parts"]
    signature = next(part["thoughtSignature"] for part in parts if "thoughtSignature" in part)
    first = call(ADD_AND_MULTIPLY, tools=ARITHMETIC)
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [
        ("wxvlv0tv", "add", {"a": 2, "b": 3}),
        ("75p2opbh", "multiply", {"a": 2, "b": 3}),
    ]
    assert first.thinking_blocks == [{"type": "thought_signature", "signature": signature, "tool_call_id": "wxvlv0tv"}]
    history = [
        {"role": "user", "content": ADD_AND_MULTIPLY},
        first.message,
        {"role": "tool", "tool_call_id": "wxvlv0tv", "content": "5"},
        {"role": "tool", "tool_call_id": "75p2opbh", "content": "6"},
    ]
    assert call(history, tools=ARITHMETIC).success
    sent = gemini.bodies()[1]["contents"]
    assert decoded(sent) == decoded(PARALLEL_RESULT_REQUEST["contents"])  # the thought is not sent back
    assert ["thoughtSignature" in part for part in sent[1]["parts"]] == [True, False]
    assert [turn["role"] for turn in sent] == ["user", "model", "user"]  # both results in one user turn


@WHOLE
def test_a_signed_text_part_gets_its_signature_back(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("tool_result_200.json", "generate_200.json")
    text_part = recorded("tool_result_200.json")["candidates"][0]["content"]["parts"][0]
    first = call("Weather in Florence?")
    assert first.thinking_blocks == [{"type": "thought_signature", "signature": text_part["thoughtSignature"]}]
    history = [
        {"role": "user", "content": "Weather in Florence?"},
        first.message,
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert call(history).success
    model_turn = gemini.bodies()[1]["contents"][1]
    assert decoded(model_turn) == decoded({"parts": [text_part], "role": "model"})


@STREAMED
@pytest.mark.parametrize(
    ("recording", "calls"),
    [
        ("tool_stream_200.sse", [("89nz05jy", "weather")]),
        ("thinking_tool_stream_200.sse", [("9d532gc9", "weather")]),
        ("parallel_tool_stream_200.sse", [("8hd01vsf", "add"), ("k0srpqrc", "multiply")]),
    ],
)
def test_streamed_signatures_are_kept_and_sent_back(
    gemini: GeminiServer, streamed: Streamed, recording: str, calls: list[tuple[str, str]]
) -> None:
    gemini.stream(recording)
    events = [json.loads(line[6:]) for line in fixture(f"gemini/{recording}").splitlines() if line]
    signature = events[0]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    tools = ARITHMETIC if len(calls) == 2 else [WEATHER]
    _, first = streamed("Go", tools=tools)
    assert first.success, first.error
    assert [(c.id, c.name) for c in first.tool_calls] == calls
    assert first.thinking_blocks == [{"type": "thought_signature", "signature": signature, "tool_call_id": calls[0][0]}]
    gemini.stream("tool_result_stream_200.sse")
    history = [{"role": "user", "content": "Go"}, first.message]
    history += [{"role": "tool", "tool_call_id": call_id, "content": "ok"} for call_id, _ in calls]
    _, second = streamed(history, tools=tools)
    assert second.prompt_tokens == 206  # the last event's: it differs from the earlier ones' 95
    assert second.content == "The current weather in Florence, Italy is 40°C (104°F). Stay hydrated, it's quite hot!"
    model_turn, results = gemini.bodies()[1]["contents"][1:]
    assert [
        base64_bytes(part["thoughtSignature"]) if "thoughtSignature" in part else None for part in model_turn["parts"]
    ] == [
        base64_bytes(signature),
        *[None] * (len(calls) - 1),
    ]
    assert [part["functionCall"]["id"] for part in model_turn["parts"]] == [call_id for call_id, _ in calls]
    assert [part["functionResponse"]["id"] for part in results["parts"]] == [call_id for call_id, _ in calls]


@pytest.mark.parametrize("runner", ["sync", "async"])
def test_run_tools_end_to_end(gemini: GeminiServer, runner: str) -> None:
    gemini.answer("tool_200.json", "tool_result_200.json")
    if runner == "sync":
        run = run_tools_sync(FLORENCE, [weather], model_name=PRO)
    else:
        run = asyncio.run(run_tools_async(FLORENCE, [weather], model_name=PRO))
    assert run.complete and run.steps == 2, run.response.error
    assert run.response.content == "The current weather in Florence, Italy is 40°C."
    first, second = gemini.bodies()
    assert [d["name"] for d in first["tools"][0]["functionDeclarations"]] == ["weather"]
    function_call, function_response = second["contents"][1]["parts"][0], second["contents"][2]["parts"][0]
    assert function_call["functionCall"] == {
        "id": "1wzw08fx",
        "name": "weather",
        "args": {"location": "Florence, Italy"},
    }
    assert base64_bytes(function_call["thoughtSignature"]) == base64_bytes(TOOL_REPLY["thoughtSignature"])
    assert function_response == {
        "functionResponse": {"id": "1wzw08fx", "name": "weather", "response": {"result": "40 C"}}
    }
    assert [turn["role"] for turn in second["contents"]] == ["user", "model", "user"]


# ============================================================================================
# 6. tools
# ============================================================================================


class Forecast(BaseModel):
    """Get the forecast for a location"""

    location: str = Field(description="the city")
    days: int = 1


@WHOLE
def test_functions_models_and_dicts_become_function_declarations(gemini: GeminiServer, call: Call) -> None:
    assert call("Hi", tools=[weather, Forecast, WEATHER | {"name": "weather_dict"}]).success
    (body,) = gemini.bodies()
    (tools,) = body["tools"]
    declarations = {d["name"]: d for d in tools["functionDeclarations"]}
    assert list(declarations) == ["weather", "Forecast", "weather_dict"]
    schema = WEATHER["parameters"]
    assert declarations["weather"]["description"] == "Get weather information for a location"
    assert declarations["weather"]["parameters_json_schema"]["properties"] == schema["properties"]
    assert declarations["weather"]["parameters_json_schema"]["required"] == ["location"]
    assert declarations["Forecast"]["description"] == "Get the forecast for a location"
    forecast = declarations["Forecast"]["parameters_json_schema"]
    assert forecast["properties"]["location"] == {"type": "string", "description": "the city"}
    assert forecast["properties"]["days"]["type"] == "integer" and forecast["required"] == ["location"]
    assert declarations["weather_dict"] == {
        "name": "weather_dict",
        "description": WEATHER["description"],
        "parameters_json_schema": schema,
    }
    for declaration in declarations.values():
        assert "parameters" not in declaration and "parametersJsonSchema" not in declaration
    assert "toolConfig" not in body  # no tool_choice: Gemini's default


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ("none", {"mode": "NONE"}),
        ("weather", {"mode": "ANY", "allowedFunctionNames": ["weather"]}),
    ],
)
@EVERY
def test_tool_choice_is_a_function_calling_mode(
    gemini: GeminiServer, call: Call, choice: str, config: dict[str, Any]
) -> None:
    assert call("Hi", tools=[WEATHER], tool_choice=choice).success
    (body,) = gemini.bodies()
    assert body["toolConfig"] == {"functionCallingConfig": config}
    if choice == "auto":
        assert body["toolConfig"] == recorded("tool_request.json")["toolConfig"]


@pytest.mark.parametrize("recording", ["g25_tool_200.json", "g25_parallel_tool_stream_200.sse"])
def test_calls_without_ids_get_distinct_ones_sent_back(gemini: GeminiServer, recording: str) -> None:
    streamed = recording.endswith(".sse")
    (gemini.stream if streamed else gemini.answer)(recording, model=FLASH)
    first = (stream_sync if streamed else whole_sync)("Go", model_name=FLASH, tools=[*ARITHMETIC, WEATHER])
    assert first.success, first.error
    ids = [c.id for c in first.tool_calls]
    assert len(ids) == len(set(ids)) == (2 if streamed else 1) and all(ids)
    parts = (
        recorded(recording)["candidates"][0]["content"]["parts"]
        if not streamed
        else json.loads(fixture(f"gemini/{recording}").splitlines()[0][6:])["candidates"][0]["content"]["parts"]
    )
    assert first.thinking_blocks == [
        {"type": "thought_signature", "signature": parts[0]["thoughtSignature"], "tool_call_id": ids[0]}
    ]
    history = [{"role": "user", "content": "Go"}, first.message]
    history += [{"role": "tool", "tool_call_id": call_id, "content": "ok"} for call_id in ids]
    assert whole_sync(history, model_name=FLASH, tools=[*ARITHMETIC, WEATHER]).success
    model_turn, results = gemini.bodies()[1]["contents"][1:]
    assert [part["functionCall"]["id"] for part in model_turn["parts"]] == ids
    assert base64_bytes(model_turn["parts"][0]["thoughtSignature"]) == base64_bytes(parts[0]["thoughtSignature"])
    assert [(part["functionResponse"]["id"], part["functionResponse"]["name"]) for part in results["parts"]] == [
        (call_id, call.name) for call_id, call in zip(ids, first.tool_calls, strict=True)
    ]


@EVERY
def test_a_result_for_an_unknown_call_is_refused_before_sending(gemini: GeminiServer, call: Call) -> None:
    history = [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "weather", "arguments": {}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "ok"},
    ]
    response = call(history, tools=[WEATHER])
    assert_failed([response], ErrorKind.INVALID_INPUT, "'c2'", "no earlier assistant message made")
    assert gemini.requests == []


def test_unenforced_schema_keywords_are_warned_of(gemini: GeminiServer) -> None:
    tool = {"name": "lookup", "parameters": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}$", "minLength": 3}, "enum_like": {"enum": ["pattern"]},
    }}}  # fmt: skip
    with pytest.warns(UserWarning, match=r"tool 'lookup': Gemini takes no minLength, pattern in a schema"):
        assert whole_sync("Hi", tools=[tool]).success
    with pytest.warns(UserWarning, match=r"minLength, pattern"):
        assert whole_async("Hi", tools=[tool]).success
    sent = [body["tools"][0]["functionDeclarations"][0]["parameters_json_schema"] for body in gemini.bodies()]
    kept = {"type": "object", "properties": {"code": {"type": "string"}, "enum_like": {"enum": ["pattern"]}}}
    assert sent == [kept, kept]  # left out, as the warning says


# ============================================================================================
# 7. structured output
# ============================================================================================

JSON_SCHEMA_REQUEST = recorded("json_schema_request.json")
PERSON_PROMPT = JSON_SCHEMA_REQUEST["contents"][0]["parts"][0]["text"]


class Person(BaseModel):
    name: str
    age: int
    city: str


@EVERY
def test_a_pydantic_response_format_is_a_response_json_schema(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("json_schema_200.json")
    gemini.stream("json_schema_stream_200.sse")
    response = call(PERSON_PROMPT, response_format=Person)
    assert response.success, response.error
    assert response.parsed == Person(name="Alice", age=30, city="Paris")
    (body,) = gemini.bodies()
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == Person.model_json_schema()


class Address(BaseModel):
    city: str


class Household(BaseModel):
    name: str
    home: Address = Field(description="Where they live")


def test_beside_a_ref_only_dollar_keywords_are_sent(gemini: GeminiServer) -> None:
    """Gemini's reference (GenerationConfig.response_json_schema): "If $ref is set on a sub-schema,
    no other properties, except for those starting as a $, may be set." pydantic puts a field's
    description beside the $ref of its model."""
    assert Household.model_json_schema()["properties"]["home"] == {
        "$ref": "#/$defs/Address",
        "description": "Where they live",
    }
    gemini.answer(text_reply('{"name": "Alice", "home": {"city": "Paris"}}'))
    response = whole_sync("Alice lives in Paris", response_format=Household)
    assert response.parsed == Household(name="Alice", home=Address(city="Paris"))
    (body,) = gemini.bodies()
    assert body["generationConfig"]["responseJsonSchema"]["properties"]["home"] == {"$ref": "#/$defs/Address"}


@WHOLE
def test_a_dict_response_format_is_sent_as_recorded(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("json_schema_200.json")
    schema = JSON_SCHEMA_REQUEST["generationConfig"]["responseJsonSchema"]
    response = call(PERSON_PROMPT, response_format=schema, max_tokens=4000)
    assert response.parsed == {"name": "Alice", "age": 30, "city": "Paris"}
    (body,) = gemini.bodies()
    assert body["generationConfig"] == {"temperature": 0.7, **JSON_SCHEMA_REQUEST["generationConfig"]}
    assert body["contents"] == JSON_SCHEMA_REQUEST["contents"]


@WHOLE
def test_a_reply_that_does_not_fit_is_invalid_output(gemini: GeminiServer, call: Call) -> None:
    gemini.answer(text_reply('{"name": "Alice", "age": "thirty"}'))
    response = call(PERSON_PROMPT, response_format=Person)
    assert not response.success and response.error_kind is ErrorKind.INVALID_OUTPUT
    assert "Person" in (response.error or "")
    assert response.content == '{"name": "Alice", "age": "thirty"}'  # the raw reply is kept


# ============================================================================================
# 8. images
# ============================================================================================


@EVERY
def test_images_from_bytes_a_path_or_a_data_url_are_inline_data(
    gemini: GeminiServer, call: Call, tmp_path: Path
) -> None:
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "data": PNG, "media_type": "image/png"},
        {"type": "image", "path": str(image)},
        {"type": "image", "url": f"data:image/jpeg;base64,{PNG64}"},
    ]
    assert call([{"role": "user", "content": content}]).success
    ((turn,),) = [body["contents"] for body in gemini.bodies()]
    assert turn["role"] == "user"
    text, *images = turn["parts"]
    assert text == {"text": "What is in these?"}
    # google-genai 3.x sends mime_type in snake_case, 2.x mimeType (the API takes either).
    mime_types = [part["inlineData"].get("mime_type", part["inlineData"].get("mimeType")) for part in images]
    assert [
        (mime, base64_bytes(part["inlineData"]["data"])) for mime, part in zip(mime_types, images, strict=True)
    ] == [
        ("image/png", PNG),
        ("image/png", PNG),
        ("image/jpeg", PNG),
    ]


@EVERY
def test_an_image_url_is_refused_before_sending(gemini: GeminiServer, call: Call) -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "url": "https://example.com/cat.jpg"}]
    response = call([{"role": "user", "content": content}])
    assert_failed([response], ErrorKind.INVALID_INPUT, "sends images inline, and fetches no URL", "example.com/cat.jpg")
    assert gemini.requests == []


# ============================================================================================
# 9. errors
# ============================================================================================


ERRORS = [
    ErrorCase(429, "error_rate_limit_429.json", ErrorKind.RATE_LIMIT, ("You exceeded your current quota",), 37),
    ErrorCase(403, "error_permission_denied_403.json", ErrorKind.AUTH, ("unregistered callers", "may use this model")),
    ErrorCase(404, "error_not_found_404.json", ErrorKind.NOT_FOUND, ("models/gemini-pro is not found", "'gemini-pro'")),
    ErrorCase(400, "error_context_length_400.json", ErrorKind.CONTEXT_LENGTH, ("input token count (3475108)",)),
    ErrorCase(500, "error_internal_500.json", ErrorKind.SERVER, ("An internal error has occurred",)),
    ErrorCase(503, "error_overloaded_503.json", ErrorKind.OVERLOADED, ("The model is overloaded",)),
    ErrorCase(503, "error_high_demand_503.json", ErrorKind.OVERLOADED, ("experiencing high demand",)),
]  # fmt: skip


def case_id(case: ErrorCase) -> str:
    return str(case.body).removesuffix(".json").removeprefix("error_")


@pytest.mark.parametrize("case", ERRORS, ids=case_id)
@WHOLE
def test_errors(gemini: GeminiServer, call: Call, case: ErrorCase, chatplug_log: pytest.LogCaptureFixture) -> None:
    gemini.answer(reply(case.body, case.status), model="gemini-pro")
    response = call("Hi", model_name="gemini-pro")
    assert_failed([response], case.kind, f"HTTP {case.status}", *case.words)
    assert response.error is not None and KEY not in response.error
    assert response.retry_after == case.retry_after
    assert (response.model_used, response.attempts) == ("gemini-pro", 1)
    assert len(gemini.requests) == 1  # the SDK's own retries are off
    assert len(warnings_logged(chatplug_log)) == 1
    with pytest.raises(chatplug.ChatplugError) as raised:
        response.raise_for_error()
    assert type(raised.value) is RAISED[case.kind]
    assert (raised.value.status_code, raised.value.retry_after) == (case.status, case.retry_after)
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no SDK exception, no key
    assert KEY not in chatplug_log.text


@pytest.mark.parametrize("case", ERRORS, ids=case_id)
@pytest.mark.parametrize("streamed", [streamed_sync, streamed_async], ids=["stream-sync", "stream-async"])
def test_errors_before_a_stream(gemini: GeminiServer, streamed: Streamed, case: ErrorCase) -> None:
    gemini.stream(reply(case.body, case.status), model="gemini-pro")
    chunks, response = streamed("Hi", model_name="gemini-pro")
    assert chunks == []
    assert_failed([response], case.kind, f"HTTP {case.status}", *case.words)
    assert response.retry_after == case.retry_after
    assert len(gemini.requests) == 1


@EVERY
def test_an_invalid_key_is_an_auth_error(gemini: GeminiServer, call: Call) -> None:
    """Gemini says so with HTTP 400 (INVALID_ARGUMENT) and the reason API_KEY_INVALID."""
    gemini.answer(reply("error_api_key_invalid_400.json", 400))
    gemini.stream(reply("error_api_key_invalid_400.json", 400))
    response = call("Hi")
    assert_failed([response], ErrorKind.AUTH, "API key not valid", "Check GEMINI_API_KEY")
    assert KEY not in (response.error or "")
    assert response.retry_after is None and len(gemini.requests) == 1
    with pytest.raises(chatplug.AuthenticationError):
        response.raise_for_error()


@WHOLE
def test_an_invalid_key_keeps_the_status_gemini_sent(gemini: GeminiServer, call: Call) -> None:
    gemini.answer(reply("error_api_key_invalid_400.json", 400))
    response = call("Hi")
    assert response.error_kind is ErrorKind.AUTH
    assert "answered HTTP 400" in (response.error or "")
    assert response.exception is not None and response.exception.status_code == 400


@pytest.mark.parametrize("recording", ["error_midstream_event_200.sse", "error_midstream_200.sse"])
@STREAMED
def test_an_error_inside_a_200_stream(gemini: GeminiServer, streamed: Streamed, recording: str) -> None:
    gemini.stream(Reply(200, fixture(f"gemini/{recording}"), dict(SSE_TYPE), chunked=True))
    chunks, response = streamed("Hi")
    assert [chunk.text for chunk in chunks] == [STREAM_PIECES[0]]  # what came before the error
    assert not response.success
    assert response.error_kind is ErrorKind.OVERLOADED, response.error
    assert "experiencing high demand" in (response.error or "") and "HTTP 503" in (response.error or "")
    assert KEY not in (response.error or "")


@EVERY
def test_a_blocked_prompt_is_a_content_filter_failure(gemini: GeminiServer, call: Call) -> None:
    gemini.answer("blocked_prompt_200.json")
    gemini.stream(sse(recorded("blocked_prompt_200.json")))
    response = call("Something harmful")
    assert not response.success
    assert response.error_kind is ErrorKind.BAD_REQUEST, response.error
    assert response.finish_reason == "content_filter"
    assert "Gemini blocked the prompt (SAFETY" in (response.error or "")
    assert response.attempts == 1 and len(gemini.requests) == 1  # not retried
    with pytest.raises(chatplug.BadRequestError):
        response.raise_for_error()


@EVERY
def test_a_reply_stopped_for_safety_before_any_text_is_a_refusal(
    gemini: GeminiServer, call: Call, chatplug_log: pytest.LogCaptureFixture
) -> None:
    """finishReason SAFETY with nothing said: a failure (bad_request, not retried) whose
    finish_reason is content_filter, the reason in the error."""
    gemini.answer("safety_finish_200.json")
    gemini.stream(sse(recorded("safety_finish_200.json")))
    response = call("Something dangerous")
    assert_failed([response], ErrorKind.BAD_REQUEST, "stopped the reply before any text (SAFETY)")
    assert (response.content, response.finish_reason, response.attempts) == ("", "content_filter", 1)
    assert any("Gemini stopped the reply (SAFETY)" in line for line in warnings_logged(chatplug_log))


@EVERY
def test_a_reply_stopped_for_safety_midway_keeps_its_text(gemini: GeminiServer, call: Call) -> None:
    body = recorded("safety_finish_200.json")
    body["candidates"][0]["content"] = {"role": "model", "parts": [{"text": "Here is how"}]}
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Here is how"}]}, "index": 0}]}
    stopped = recorded("safety_finish_200.json")
    gemini.answer(body)
    gemini.stream(sse(first, stopped))
    response = call("Something dangerous")
    assert response.success, response.error
    assert (response.content, response.finish_reason) == ("Here is how", "content_filter")


@WHOLE
def test_a_whole_reply_that_is_not_json_is_a_server_error(gemini: GeminiServer, call: Call) -> None:
    """The SDK parses a whole reply with json.loads: its JSONDecodeError is raised in json, not in
    google.*, which the backend's _from_sdk looks for in the innermost frame only."""
    gemini.answer(Reply(200, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"}))
    response = call("Hi")
    assert_failed([response], ErrorKind.SERVER, "sent a reply chatplug could not read (JSONDecodeError")


@WHOLE
def test_a_whole_reply_without_candidates_is_a_server_error(gemini: GeminiServer, call: Call) -> None:
    gemini.answer({"unexpected": True})
    response = call("Hi")
    assert not response.success
    assert response.error_kind is ErrorKind.SERVER, response.error


@pytest.mark.parametrize("body", [b"data: <html>\r\n\r\n", b"<html>502 Bad Gateway</html>\n"], ids=["data", "raw"])
@STREAMED
def test_a_stream_that_is_not_json_is_a_server_error(gemini: GeminiServer, streamed: Streamed, body: bytes) -> None:
    gemini.stream(Reply(200, body, dict(SSE_TYPE), chunked=True))
    chunks, response = streamed("Hi")
    assert chunks == []
    assert_failed([response], ErrorKind.SERVER, "sent a reply chatplug could not read", "<html>")
    with pytest.raises(chatplug.InvalidResponseError):
        response.raise_for_error()


@EVERY
def test_connection_refused(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", f"http://127.0.0.1:{closed_port}")
    response = call("Hi")
    assert_failed([response], ErrorKind.CONNECTION, "could not connect to Gemini at", f"127.0.0.1:{closed_port}")


@EVERY
def test_a_server_that_does_not_answer_times_out(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "0.3")
    gemini.answer(Reply(hang=True))
    gemini.stream(Reply(hang=True))
    response = call("Hi")
    assert_failed([response], ErrorKind.TIMEOUT, "did not answer within 0.3 s")
    assert len(gemini.requests) == 1


# ============================================================================================
# 10. configuration
# ============================================================================================


@EVERY
def test_no_key_is_an_auth_error_naming_gemini_api_key(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    response = call("Hi")
    assert_failed([response], ErrorKind.AUTH, "GEMINI_API_KEY is not set")
    assert gemini.requests == []


@WHOLE
def test_google_api_key_alone_is_used(gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaSy-google-only-key")
    assert call("Hi").success
    assert [headers_of(r)["x-goog-api-key"] for r in gemini.requests] == ["AIzaSy-google-only-key"]


@WHOLE
def test_google_api_key_wins_over_gemini_api_key(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "AIzaSy-google-key")
    assert call("Hi").success
    assert [headers_of(r)["x-goog-api-key"] for r in gemini.requests] == ["AIzaSy-google-key"]


@pytest.mark.parametrize("url", ["127.0.0.1:8080", "ftp://127.0.0.1/", "http://[::1", "http://127.0.0.1:99999"])
@EVERY
def test_a_malformed_base_url_is_a_config_error(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("GEMINI_BASE_URL", url)
    response = call("Hi")
    assert_failed([response], ErrorKind.CONFIG, "GEMINI_BASE_URL", "is not valid")
    assert gemini.requests == []


def test_a_rotated_key_is_sent_from_the_next_call(gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert whole_sync("Hi").success
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaSy-rotated-key")
    assert whole_sync("Hi").success and whole_async("Hi").success
    assert [headers_of(r)["x-goog-api-key"] for r in gemini.requests] == [
        KEY,
        "AIzaSy-rotated-key",
        "AIzaSy-rotated-key",
    ]


@WHOLE
def test_the_key_is_masked_in_a_failed_call(gemini: GeminiServer, call: Call, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: chatplug's, the SDK's, httpx's
    body = recorded("error_api_key_invalid_400.json")
    body["error"]["message"] = f"API key not valid: {KEY}."
    gemini.answer(reply(body, 400))
    response = call("Hi")
    assert any(KEY in value for value in gemini.requests[0].headers.values())  # it was sent
    assert_failed([response], ErrorKind.AUTH, "API key not valid: ***")
    shown = (str(response), repr(response), json.dumps(response.to_dict()), repr(response.exception))
    assert not any(KEY in text for text in shown)
    assert KEY not in caplog.text


# ============================================================================================
# 11. retries, 12. the model's prefix
# ============================================================================================


@EVERY
def test_the_pipeline_retries_and_the_sdk_does_not(
    gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chatplug._pipeline.retry, "BACKOFF_BASE", 0.001)  # chatplug's wait, not the SDK
    settings.max_retries = None  # conftest's 0 set in code would win over the environment
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    gemini.answer(reply("error_overloaded_503.json", 503), "generate_200.json")
    gemini.stream(reply("error_overloaded_503.json", 503), "stream_200.sse")
    response = call("Hi")
    assert response.success, response.error
    assert response.content == ("".join(STREAM_PIECES) if is_stream(call) else GENERATED["text"])
    assert response.attempts == 2 and len(response.attempt_errors) == 1
    assert "The model is overloaded" in response.attempt_errors[0]
    assert len(gemini.requests) == 2


@WHOLE
def test_a_gemini_prefix_selects_the_backend(gemini: GeminiServer, call: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_BACKEND")
    response = call("Hi", model_name="gemini:gemini-2.5-flash")
    assert response.success, response.error
    assert (response.backend, response.content) == ("gemini", "Olá!")
    assert [r.path for r in gemini.requests] == [generate_path(FLASH)]


def test_a_gemini_prefix_with_generate_completion(gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_BACKEND")
    for response in (
        generate_completion_sync("Hi", "gemini:gemini-2.5-flash"),
        asyncio.run(generate_completion_async("Hi", "gemini:gemini-2.5-flash")),
    ):
        assert response.success and response.backend == "gemini"
    assert [r.path for r in gemini.requests] == [generate_path(FLASH)] * 2


# -- Vertex AI, through the SDK's own variables ---------------------------------------------


def test_vertex_ai_express_mode_posts_to_vertex_with_its_key(
    gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOOGLE_GENAI_USE_VERTEXAI=true and a key: the SDK's Vertex AI path, with the key it reads
    (GOOGLE_API_KEY before GEMINI_API_KEY); the reply is read as the Gemini API's."""
    model = GeminiBackend.default_model
    gemini.route("POST", f"/v1beta1/publishers/google/models/{model}:generateContent", reply("generate_200.json"))
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_API_KEY", "vertex-express-key-0042")
    for call in (generate_completion_sync, lambda prompt: asyncio.run(generate_completion_async(prompt))):
        response = call("Hi")
        assert response.success, response.error
        assert response.content.startswith("**Oi**")
    assert [request.path for request in gemini.requests] == [
        f"/v1beta1/publishers/google/models/{model}:generateContent"
    ] * 2
    assert {headers_of(request)["x-goog-api-key"] for request in gemini.requests} == {"vertex-express-key-0042"}


def test_vertex_ai_with_unusable_credentials_is_auth_before_sending(
    gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Application Default Credentials that cannot be read (GOOGLE_APPLICATION_CREDENTIALS naming
    a file that is no credentials file; read before any connection): ``auth``, saying how to log
    in, and nothing sent."""
    broken = tmp_path / "credentials.json"
    broken.write_text("not json")
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "chatplug-test")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-central1")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(broken))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # never ask a metadata server
    monkeypatch.delenv("GEMINI_BASE_URL")  # with a base URL of its own, the SDK sends without credentials
    for call in (generate_completion_sync, lambda prompt: asyncio.run(generate_completion_async(prompt))):
        response = call("Hi")
        assert response.error_kind is ErrorKind.AUTH, response.error
        assert "application-default login" in (response.error or "")
    assert gemini.requests == []


def test_the_api_version_is_the_sdks_variable(gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOOGLE_GENAI_API_VERSION=v1 moves the calls to /v1, read at each call (a new client)."""
    assert generate_completion_sync("Hi", model_name=PRO).success
    gemini.route("POST", f"/v1/models/{PRO}:generateContent", reply("generate_200.json"))
    monkeypatch.setenv("GOOGLE_GENAI_API_VERSION", "v1")
    assert generate_completion_sync("Hi", model_name=PRO).success
    assert [request.path for request in gemini.requests] == [generate_path(PRO), f"/v1/models/{PRO}:generateContent"]


# -- what a review found -------------------------------------------------------------------


@STREAMED
def test_a_stream_that_ends_without_a_finish_reason_is_cut_off(gemini: GeminiServer, streamed: Streamed) -> None:
    """A proxy that drops the stream after a piece: a failure (server, retried), never a cut-off
    reply reported as whole."""
    gemini.stream(sse({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]}))
    _, response = streamed("Hi")
    assert not response.success and response.error_kind is ErrorKind.SERVER
    assert "ended the stream before the reply was complete" in (response.error or "")
    assert response.content == "Hel"  # what came is kept


@WHOLE
@pytest.mark.parametrize("options", [{"seed": "abc"}, {"safety_settings": "x"}, {"top_k": [1]}])
def test_an_option_value_gemini_cannot_take_is_refused_before_sending(
    gemini: GeminiServer, call: Call, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_retries", 2)
    response = call("Hi", **options)
    assert_failed([response], ErrorKind.INVALID_INPUT, "Gemini cannot take these options", next(iter(options)))
    assert response.attempts == 1 and gemini.requests == []  # not retried, nothing sent


@pytest.mark.parametrize("variable", ["GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_USE_VERTEXAI"])
def test_either_of_the_sdks_vertex_variables_selects_vertex_ai(
    gemini: GeminiServer, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's newer name too: the Gemini key is never sent to the Gemini API's path by mistake
    while the SDK thinks it is Vertex AI, nor the other way round."""
    model = GeminiBackend.default_model
    gemini.route("POST", f"/v1beta1/publishers/google/models/{model}:generateContent", reply("generate_200.json"))
    monkeypatch.setenv(variable, "true")
    response = generate_completion_sync("Hi")
    assert response.success, response.error
    assert [request.path for request in gemini.requests] == [
        f"/v1beta1/publishers/google/models/{model}:generateContent"
    ]
    gemini.answer("generate_200.json", model=model)
    monkeypatch.setenv(variable, "false")
    assert generate_completion_sync("Hi").success
    assert gemini.requests[-1].path == generate_path(model)


def test_the_key_vertex_ai_uses_is_masked(gemini: GeminiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "AIza-vertex-express-secret-5521"
    model = GeminiBackend.default_model
    body = json.dumps({"error": {"code": 400, "message": f"bad key {secret}", "status": "INVALID_ARGUMENT"}})
    gemini.route(
        "POST",
        f"/v1beta1/publishers/google/models/{model}:generateContent",
        reply(Reply(400, body.encode(), dict(JSON_TYPE))),
    )
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.setenv("GOOGLE_API_KEY", secret)
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    response = generate_completion_sync("Hi")
    assert response.error_kind is ErrorKind.BAD_REQUEST
    assert secret not in (response.error or "") and "bad key ***" in (response.error or "")


@WHOLE
@pytest.mark.parametrize("url", ["data:image/png;base64,abc", "data:image/png;base64,!!!!"])
def test_a_data_url_that_is_not_base64_is_refused(gemini: GeminiServer, call: Call, url: str) -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "url": url}]}
    response = call([message])
    assert_failed([response], ErrorKind.INVALID_INPUT, "is not base64")
    assert gemini.requests == []


@WHOLE
def test_a_tool_result_that_names_its_function_needs_no_call_before_it(gemini: GeminiServer, call: Call) -> None:
    """A trimmed history: the result's own ``name`` is the function's."""
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "tool", "tool_call_id": "c9", "name": "weather", "content": "40 C"},
    ]
    assert call(history).success
    result = gemini.bodies()[0]["contents"][0]["parts"][1]
    assert result == {"functionResponse": {"id": "c9", "name": "weather", "response": {"result": "40 C"}}}


@STREAMED
def test_a_signature_after_the_calls_goes_back_after_them(gemini: GeminiServer, streamed: Streamed) -> None:
    """A stream whose signature comes on a last, empty text part after an unsigned function call:
    sent back in that order, and every text signature kept."""
    signature = base64.b64encode(b"signed after the call").decode()
    call_event = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "c1", "name": "weather", "args": {"location": "Oslo"}}}]}, "index": 0}]}  # fmt: skip
    signed_end = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "", "thoughtSignature": signature}]}, "finishReason": "STOP", "index": 0}]}  # fmt: skip
    gemini.stream(sse(call_event, signed_end), "tool_result_stream_200.sse")
    _, first = streamed("Weather in Oslo?", tools=[WEATHER])
    assert first.thinking_blocks == [{"type": "thought_signature", "signature": signature, "after_tool_calls": True}]
    history = [{"role": "user", "content": "Weather in Oslo?"}, first.message]
    history.append({"role": "tool", "tool_call_id": "c1", "content": "cold"})
    _, second = streamed(history, tools=[WEATHER])
    assert second.success, second.error
    parts = gemini.bodies()[1]["contents"][1]["parts"]
    assert [next(iter(part)) for part in parts] == ["functionCall", "text"]
    assert base64_bytes(parts[1]["thoughtSignature"]) == b"signed after the call" and parts[1]["text"] == ""


@pytest.mark.parametrize(
    ("model", "options", "sent"),
    [
        (PRO, {"reasoning_effort": "none"}, {"include_thoughts": False, "thinking_level": "MINIMAL"}),
        ("gemini-flash-latest", {"reasoning_effort": "low"}, {"include_thoughts": True, "thinking_budget": 1024}),
        (PRO, {"thinking_level": "medium"}, {"include_thoughts": True, "thinking_level": "MEDIUM"}),
    ],
)
def test_thinking_options_as_sent(
    gemini: GeminiServer, model: str, options: dict[str, Any], sent: dict[str, Any]
) -> None:
    gemini.answer("generate_200.json", model=model)
    assert whole_sync("Hi", model_name=model, **options).success
    assert gemini.bodies()[0]["generationConfig"]["thinkingConfig"] == sent


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"thinking_level": "high", "thinking_budget": 100}, "not both"),
        ({"thinking_level": "extreme"}, "thinking_level must be one of"),
        ({"reasoning_effort": "max"}, "reasoning_effort must be one of"),
    ],
)
def test_thinking_options_gemini_refuses_are_refused_before_sending(
    gemini: GeminiServer, options: dict[str, Any], words: str
) -> None:
    response = whole_sync("Hi", **options)
    assert_failed([response], ErrorKind.INVALID_INPUT, words)
    assert gemini.requests == []


@WHOLE
def test_a_url_safe_signature_is_taken(gemini: GeminiServer, call: Call) -> None:
    """The SDK writes signatures URL-safe: a message carrying one that way goes back as the same bytes."""
    raw = b"\xfb\xff\xfe signed"
    message = {"role": "assistant", "content": "Hi", "thinking_blocks": [
        {"type": "thought_signature", "signature": base64.urlsafe_b64encode(raw).decode()}]}  # fmt: skip
    assert call([{"role": "user", "content": "Hi"}, message, {"role": "user", "content": "Again"}]).success
    part = gemini.bodies()[0]["contents"][1]["parts"][0]
    assert base64_bytes(part["thoughtSignature"]) == raw


def test_reply_parts_chatplug_does_not_read_are_said(
    gemini: GeminiServer, chatplug_log: pytest.LogCaptureFixture
) -> None:
    body = recorded("generate_200.json")
    body["candidates"][0]["content"]["parts"].append({"executableCode": {"language": "PYTHON", "code": "print(1)"}})
    gemini.answer(body)
    response = whole_sync("Hi")
    assert response.success and response.content.startswith("**Oi**")
    assert any("executable_code" in line for line in warnings_logged(chatplug_log))
