"""Tools, tool results, images and structured output on the ollama backend: the real ollama SDK
over a socket against a fake Ollama server answering with the recorded fixtures, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import copy
import enum
import json
import logging
import types
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import ollama as ollama_sdk
import pytest
from pydantic import BaseModel, Field

from chatplug import (
    ChatChunk,
    ChatRequest,
    ErrorKind,
    LLMResponse,
    Tool,
    ToolCall,
    ToolCallDelta,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    run_tools_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .conftest import ollama_reply
from .fakeserver import FakeServer, Reply, fixture

TOOLS_REQUEST = json.loads(fixture("ollama/chat_tools_request.json"))
RESULT_REQUEST = json.loads(fixture("ollama/chat_tool_result_request.json"))
PROMPT = TOOLS_REQUEST["messages"][0]["content"]  # "what is the weather in tokyo?"
#: The fixture's tool, given to chatplug as a plain dict.
WEATHER = TOOLS_REQUEST["tools"][0]["function"]
TOKYO = ToolCall("call_0", "get_weather", {"city": "Tokyo"}, '{"city": "Tokyo"}')
NDJSON = {"Content-Type": "application/x-ndjson"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG64 = base64.b64encode(PNG).decode()


class Capital(BaseModel):
    """The capital of a country."""

    city: str
    country: str


def streamed(body: bytes) -> Reply:
    """An NDJSON reply, one chunk per line, as Ollama streams it."""
    return Reply(200, b"", dict(NDJSON), pieces=body.splitlines(keepends=True))


def line(**part: Any) -> bytes:
    return json.dumps(part, separators=(",", ":")).encode() + b"\n"


def call(name: str, index: int, **arguments: Any) -> dict[str, Any]:
    """A tool call as Ollama >= 0.12.10 sends it: an id, the function's index and its arguments."""
    return {"id": f"call_srv{index}", "function": {"index": index, "name": name, "arguments": arguments}}


def said(content: str = "", tool_calls: list[dict[str, Any]] | None = None, done: bool = True) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    part: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2025-07-07T20:32:53.1Z",
        "message": message,
        "done": done,
    }
    if done:
        part.update(done_reason="stop", prompt_eval_count=12, eval_count=7)
    return part


def whole(content: str = "", tool_calls: list[dict[str, Any]] | None = None) -> Reply:
    return Reply(200, line(**said(content, tool_calls)).rstrip(b"\n"), {"Content-Type": "application/json"})


def as_the_sdk_sends(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fixture's messages less what the ollama SDK's pydantic models drop before sending:
    keys its ``Message`` / ``Message.ToolCall`` have no field for (tool-call ``id``, ``index``,
    ``tool_call_id`` in ollama 0.6), and empty values. Asked of the installed SDK, so that one
    that keeps more is held to sending more."""
    kept, call_kept = ollama_sdk.Message.model_fields, ollama_sdk.Message.ToolCall.model_fields
    function_kept = ollama_sdk.Message.ToolCall.Function.model_fields
    sent = []
    for message in messages:
        out = {key: value for key, value in message.items() if key in kept and value}
        if "tool_calls" in out:
            out["tool_calls"] = [
                {
                    **{key: value for key, value in c.items() if key in call_kept and key != "function"},
                    "function": {key: value for key, value in c["function"].items() if key in function_kept},
                }
                for c in out["tool_calls"]
            ]
        sent.append(out)
    return sent


def sent(server: FakeServer) -> dict[str, Any]:
    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/api/chat")
    body: dict[str, Any] = request.json()
    return body


# -- how a call is made: sync and async, whole and streamed ----------------------------------

Call = Callable[..., LLMResponse]


def whole_sync(messages: Sequence[dict[str, Any]] | str, **options: Any) -> LLMResponse:
    if isinstance(messages, str):
        return generate_completion_sync(messages, **options)
    return generate_completion_with_messages_sync(list(messages), **options)


def whole_async(messages: Sequence[dict[str, Any]] | str, **options: Any) -> LLMResponse:
    coroutine: Coroutine[Any, Any, LLMResponse]
    if isinstance(messages, str):
        coroutine = generate_completion_async(messages, **options)
    else:
        coroutine = generate_completion_with_messages_async(list(messages), **options)
    return asyncio.run(coroutine)


def stream_sync(messages: Sequence[dict[str, Any]] | str, **options: Any) -> LLMResponse:
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    with stream_completion_with_messages_sync(listed, **options) as stream:
        for _ in stream:
            pass
    return stream.response


def stream_async(messages: Sequence[dict[str, Any]] | str, **options: Any) -> LLMResponse:
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)

    async def go() -> LLMResponse:
        async with stream_completion_with_messages_async(listed, **options) as stream:
            async for _ in stream:
                pass
        return stream.response

    return asyncio.run(go())


WHOLE = pytest.mark.parametrize("run", [whole_sync, whole_async], ids=["sync", "async"])
STREAMED = pytest.mark.parametrize("run", [stream_sync, stream_async], ids=["stream-sync", "stream-async"])
EVERY = pytest.mark.parametrize(
    "run", [whole_sync, whole_async, stream_sync, stream_async], ids=["sync", "async", "stream-sync", "stream-async"]
)


@pytest.fixture
def tool_server(ollama: FakeServer) -> Iterator[FakeServer]:
    """The fake Ollama server answering with the recorded tool call."""
    ollama.route("POST", "/api/chat", ollama_reply("chat_tool_nonstream_200.json"))
    yield ollama


def test_capabilities_are_declared() -> None:
    from chatplug.backends.ollama import OllamaBackend

    assert OllamaBackend.capabilities == frozenset({"tools", "images", "response_format"})


# -- tools out, tool calls back ------------------------------------------------------------


@WHOLE
def test_a_tools_request_is_the_fixture_and_its_reply_a_tool_call(tool_server: FakeServer, run: Call) -> None:
    response = run(PROMPT, tools=[WEATHER])
    assert response.success, response.error
    assert response.tool_calls == [TOKYO]
    assert response.tool_calls[0].arguments == {"city": "Tokyo"}
    assert response.finish_reason == "tool_calls"  # Ollama said "stop"
    assert response.content == ""
    assert (response.prompt_tokens, response.completion_tokens) == (169, 18)
    body = sent(tool_server)
    assert body["tools"] == TOOLS_REQUEST["tools"]
    assert body["messages"] == TOOLS_REQUEST["messages"]
    assert (body["model"], body["stream"]) == (TOOLS_REQUEST["model"], TOOLS_REQUEST["stream"])


@STREAMED
def test_a_streamed_tool_call_is_the_same(ollama: FakeServer, run: Call) -> None:
    ollama.route("POST", "/api/chat", streamed(fixture("ollama/chat_tool_stream_200.ndjson")))
    response = run(PROMPT, tools=[WEATHER])
    assert response.success, response.error
    assert response.tool_calls == [TOKYO]
    assert response.finish_reason == "tool_calls"
    assert (response.prompt_tokens, response.completion_tokens) == (169, 15)
    body = sent(ollama)
    assert body["stream"] is True
    assert (body["tools"], body["messages"]) == (TOOLS_REQUEST["tools"], TOOLS_REQUEST["messages"])


def backend_chunks(*, use_async: bool) -> list[ChatChunk]:
    """The chunks the backend itself streams (the pipeline gives callers the text ones only)."""
    from chatplug.backends.ollama import OllamaBackend

    backend = OllamaBackend()
    request = ChatRequest(messages=({"role": "user", "content": PROMPT},), model="llama3.2", tools=(WEATHER_TOOL,))
    try:
        if not use_async:
            return list(backend.stream(request))

        async def go() -> list[ChatChunk]:
            return [chunk async for chunk in backend.astream(request)]

        return asyncio.run(go())
    finally:
        backend.close()


WEATHER_TOOL = Tool(WEATHER["name"], WEATHER["description"], WEATHER["parameters"])


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_the_backend_streams_tool_call_deltas_numbered_over_the_reply(ollama: FakeServer, use_async: bool) -> None:
    ollama.route("POST", "/api/chat", streamed(fixture("ollama/chat_tool_stream_200.ndjson")))
    first, last = backend_chunks(use_async=use_async)
    assert first.tool_calls == (ToolCallDelta(0, "call_0", "get_weather", '{"city": "Tokyo"}'),)
    assert (first.text, first.finish_reason) == ("", None)
    assert last.tool_calls == () and last.finish_reason == "stop"
    assert sent(ollama)["tools"] == TOOLS_REQUEST["tools"]

    calls = [call("a", 0, x=1), call("b", 1, y=[2]), call("c", 2)]
    parts = (said(tool_calls=calls[:1], done=False), said("hm", done=False), said(tool_calls=calls[1:]))
    ollama.route("POST", "/api/chat", streamed(b"".join(line(**p) for p in parts)))
    chunks = backend_chunks(use_async=use_async)
    deltas = [delta for chunk in chunks for delta in chunk.tool_calls]
    assert deltas == [
        ToolCallDelta(0, "call_0", "a", '{"x": 1}'),
        ToolCallDelta(1, "call_1", "b", '{"y": [2]}'),
        ToolCallDelta(2, "call_2", "c", "{}"),
    ]
    assert [chunk.text for chunk in chunks] == ["", "hm", ""]


@EVERY
def test_several_calls_are_numbered_over_the_whole_reply(ollama: FakeServer, run: Call) -> None:
    calls = [call("get_weather", 0, city="Tokyo"), call("get_weather", 1, city="Paris"), call("get_time", 2, tz="CET")]
    if run in (stream_sync, stream_async):
        parts = (said(tool_calls=calls[:1], done=False), said(tool_calls=calls[1:], done=False), said())
        ollama.route("POST", "/api/chat", streamed(b"".join(line(**p) for p in parts)))
    else:
        ollama.route("POST", "/api/chat", whole(tool_calls=calls))
    time = {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}
    response = run("weather in Tokyo and Paris, and the time?", tools=[WEATHER, time])
    assert response.success, response.error
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_0", "get_weather", {"city": "Tokyo"}),
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_time", {"tz": "CET"}),
    ]
    assert response.finish_reason == "tool_calls"


@EVERY
def test_text_alongside_tool_calls_is_kept(ollama: FakeServer, run: Call) -> None:
    calls = [call("get_weather", 0, city="Tokyo", days=[1, 2], detail={"wind": True})]
    if run in (stream_sync, stream_async):
        body = line(**said("Let me check.", done=False)) + line(**said(tool_calls=calls, done=False)) + line(**said())
        ollama.route("POST", "/api/chat", streamed(body))
    else:
        ollama.route("POST", "/api/chat", whole("Let me check.", calls))
    response = run(PROMPT, tools=[WEATHER])
    assert response.success, response.error
    assert response.content == "Let me check."
    assert response.tool_calls[0].arguments == {"city": "Tokyo", "days": [1, 2], "detail": {"wind": True}}


def test_tool_choice_auto_sends_the_tools_and_none_sends_none(tool_server: FakeServer) -> None:
    assert generate_completion_sync(PROMPT, tools=[WEATHER], tool_choice="auto").success
    tool_server.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
    response = generate_completion_sync(PROMPT, tools=[WEATHER], tool_choice="none")
    assert response.success and response.tool_calls == []
    auto, none = (request.json() for request in tool_server.requests)
    assert auto["tools"] == TOOLS_REQUEST["tools"]
    assert not none["tools"]
    assert "tool_choice" not in auto and "tool_choice" not in none


def test_a_strict_tool_is_sent_with_a_warning_that_ollama_has_no_strict_mode(
    tool_server: FakeServer, chatplug_log: pytest.LogCaptureFixture
) -> None:
    strict = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}, "strict": True}}
    assert generate_completion_sync(PROMPT, tools=[strict]).success
    (tool,) = tool_server.requests[0].json()["tools"]
    assert "strict" not in tool["function"]
    assert "ollama: tool 'look' asks for strict mode, which Ollama has not: strict is not sent" in chatplug_log.messages


@EVERY
@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_a_tool_choice_ollama_cannot_say_is_refused_before_sending(
    tool_server: FakeServer, run: Call, choice: str
) -> None:
    response = run(PROMPT, tools=[WEATHER], tool_choice=choice)
    assert not response.success
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert response.error is not None
    assert "ollama backend" in response.error and f"tool_choice={choice!r}" in response.error
    assert tool_server.requests == []


# -- tool results back in --------------------------------------------------------------------


@WHOLE
def test_a_tool_result_conversation_is_sent_in_the_fixture_s_shape(tool_server: FakeServer, run: Call) -> None:
    asked = run(PROMPT, tools=[WEATHER])
    assert asked.success, asked.error
    tool_server.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
    conversation = [
        {"role": "user", "content": PROMPT},
        asked.message,
        {"role": "tool", "tool_call_id": asked.tool_calls[0].id, "content": "11 degrees celsius"},
    ]
    answer = run(conversation, tools=[WEATHER])
    assert answer.success, answer.error
    assert answer.tool_calls == [] and answer.finish_reason == "stop"
    body = tool_server.requests[1].json()
    assert body["tools"] == RESULT_REQUEST["tools"]
    assert body["messages"] == as_the_sdk_sends(RESULT_REQUEST["messages"])
    # What ollama 0.6 sends, spelled out: the call without its id, the result named by its tool.
    assert body["messages"][1:] == [
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"},
    ]


def test_a_tool_result_with_no_known_tool_goes_without_a_name(ollama: FakeServer) -> None:
    conversation = [
        {"role": "user", "content": PROMPT},
        {"role": "tool", "tool_call_id": "call_x", "content": "11 degrees celsius"},
    ]
    assert generate_completion_with_messages_sync(conversation, tools=[WEATHER]).success
    assert sent(ollama)["messages"][1] == {"role": "tool", "content": "11 degrees celsius"}


def test_run_tools_drives_the_whole_loop(ollama: FakeServer) -> None:
    def get_weather(city: str) -> str:
        """Get the weather in a given city.

        Args:
            city: The city to get the weather for
        """
        return f"11 degrees celsius in {city}"

    ollama.route(
        "POST", "/api/chat", ollama_reply("chat_tool_nonstream_200.json"), ollama_reply("chat_nonstream_200.json")
    )
    run = run_tools_sync(PROMPT, [get_weather])
    assert run.complete, run.response.error
    assert run.steps == 2
    first, second = (request.json() for request in ollama.requests)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert second["messages"][-1] == {
        "role": "tool",
        "content": "11 degrees celsius in Tokyo",
        "tool_name": "get_weather",
    }


# -- images ----------------------------------------------------------------------------------


@EVERY
def test_image_parts_from_a_path_bytes_or_a_data_url_go_in_images(
    ollama: FakeServer, run: Call, tmp_path: Path
) -> None:
    if run in (stream_sync, stream_async):
        ollama.route("POST", "/api/chat", streamed(fixture("ollama/chat_stream_200.ndjson")))
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in these images?"},
            {"type": "image", "path": str(image)},
            {"type": "image", "data": PNG, "media_type": "image/png"},
            {"type": "image", "url": f"data:image/png;base64,{PNG64}"},
        ],
    }
    response = run([message], model_name="llava")
    assert response.success, response.error
    assert sent(ollama)["messages"] == [
        {"role": "user", "content": "What is in these images?", "images": [PNG64, PNG64, PNG64]}
    ]


@EVERY
def test_an_image_by_url_is_refused_before_sending(ollama: FakeServer, run: Call) -> None:
    message = {"role": "user", "content": [{"type": "image", "url": "https://example.com/cat.jpg"}]}
    response = run([message], model_name="llava")
    assert not response.success
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert response.error is not None
    assert "ollama backend" in response.error and "'path'" in response.error and "'data'" in response.error
    assert ollama.requests == []


# -- structured output -----------------------------------------------------------------------

PARIS = '{"city": "Paris", "country": "France"}'


@EVERY
def test_response_format_sends_the_schema_as_format_and_parses_the_reply(ollama: FakeServer, run: Call) -> None:
    if run in (stream_sync, stream_async):
        pieces = b"".join(line(**said(piece, done=False)) for piece in (PARIS[:10], PARIS[10:])) + line(**said())
        ollama.route("POST", "/api/chat", streamed(pieces))
    else:
        ollama.route("POST", "/api/chat", whole(PARIS))
    response = run("The capital of France?", response_format=Capital)
    assert response.success, response.error
    assert response.parsed == Capital(city="Paris", country="France")
    assert response.content == PARIS
    body = sent(ollama)
    assert body["format"] == Capital.model_json_schema()
    assert body["messages"] == [{"role": "user", "content": "The capital of France?"}]
    assert not body["tools"]


@EVERY
def test_a_reply_that_does_not_fit_is_invalid_output_with_the_text_kept(ollama: FakeServer, run: Call) -> None:
    wrong = '{"city": "Paris"}'
    if run in (stream_sync, stream_async):
        ollama.route("POST", "/api/chat", streamed(line(**said(wrong, done=False)) + line(**said())))
    else:
        ollama.route("POST", "/api/chat", whole(wrong))
    response = run("The capital of France?", response_format=Capital)
    assert not response.success
    assert response.error_kind is ErrorKind.INVALID_OUTPUT
    assert response.content == wrong
    assert response.parsed is None
    assert len(ollama.requests) == 1


def test_a_dict_schema_is_sent_as_it_is(ollama: FakeServer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    ollama.route("POST", "/api/chat", whole('{"n": 3}'))
    response = generate_completion_sync("A number?", response_format=schema)
    assert response.success, response.error
    assert response.parsed == {"n": 3}
    assert sent(ollama)["format"] == schema


def test_format_alone_is_the_caller_s_and_with_response_format_refused(ollama: FakeServer) -> None:
    assert generate_completion_sync("Hi", format="json").success
    assert ollama.requests[0].json()["format"] == "json"
    response = generate_completion_sync("Hi", format="json", response_format=Capital)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert response.error is not None and "format" in response.error and "response_format" in response.error
    assert len(ollama.requests) == 1


# -- what stays as it was --------------------------------------------------------------------


def test_a_plain_request_is_byte_for_byte_what_it_was(ollama: FakeServer) -> None:
    generate_completion_sync("Hi")
    assert ollama.requests[0].body == (
        b'{"model":"llama3.2","stream":false,"options":{"top_p":0.9,"repeat_penalty":1.1,"temperature":0.7,'
        b'"num_predict":500},"messages":[{"role":"user","content":"Hi"}],"tools":[]}'
    )


# -- tool schemas reach Ollama whole -----------------------------------------------------------
# The SDK's own Tool model keeps a property's type, items, description and enum only: sent
# through it, the parameters below would reach Ollama without $ref, anyOf, default,
# additionalProperties, and the dict tool's nested properties.


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(BaseModel):
    """Where to look."""

    city: str
    country: str = "JP"


def forecast(
    place: Place,
    unit: Unit,
    mode: Literal["daily", "hourly"],
    days: int | None = None,
    hours: tuple[int, ...] = (9, 18),
) -> str:
    """The weather forecast for a place.

    Args:
        place: Where.
        unit: Which unit the temperatures are in.
        days: How many days ahead.
    """
    return f"{place} {unit} {mode} {days} {hours}"


class Forecast(BaseModel):
    """The weather forecast for a place."""

    place: Place
    unit: Unit = Field(description="Which unit the temperatures are in.")
    mode: Literal["daily", "hourly"]
    days: int | None = Field(None, description="How many days ahead.")
    hours: tuple[int, ...] = (9, 18)


#: What pydantic makes of ``Place`` and ``Unit`` (chatplug keeps the titles inside ``$defs``).
DEFS = {
    "Place": {
        "description": "Where to look.",
        "properties": {
            "city": {"title": "City", "type": "string"},
            "country": {"default": "JP", "title": "Country", "type": "string"},
        },
        "required": ["city"],
        "title": "Place",
        "type": "object",
    },
    "Unit": {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"},
}
#: The properties of the function and the model alike, but for the function's ``place`` description.
PROPERTIES = {
    "place": {"$ref": "#/$defs/Place"},
    "unit": {"$ref": "#/$defs/Unit", "description": "Which unit the temperatures are in."},
    "mode": {"enum": ["daily", "hourly"], "type": "string"},
    "days": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None, "description": "How many days ahead."},
    "hours": {"default": [9, 18], "items": {"type": "integer"}, "type": "array"},
}
REQUIRED = ["place", "unit", "mode"]
#: A dict tool: its schema written out, a nested object's properties inline.
FORECAST_DICT: dict[str, Any] = {
    "name": "forecast",
    "description": "The weather forecast for a place.",
    "parameters": {
        "type": "object",
        "properties": {
            "place": {
                "type": "object",
                "description": "Where.",
                "properties": {"city": {"type": "string"}, "country": {"type": "string", "default": "JP"}},
                "required": ["city"],
            },
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Which unit."},
            "mode": {"type": "string", "enum": ["daily", "hourly"]},
            "days": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "hours": {"type": "array", "items": {"type": "integer"}, "default": [9, 18]},
        },
        "required": ["place", "unit", "mode"],
        "additionalProperties": False,
    },
}
SCHEMAS: dict[str, tuple[object, str, dict[str, Any]]] = {
    "function": (
        forecast,
        "forecast",
        {
            "$defs": DEFS,
            "additionalProperties": False,
            "properties": {**PROPERTIES, "place": {"$ref": "#/$defs/Place", "description": "Where."}},
            "required": REQUIRED,
            "type": "object",
        },
    ),
    "model": (
        Forecast,
        "Forecast",
        {
            "$defs": DEFS,
            "description": "The weather forecast for a place.",
            "properties": PROPERTIES,
            "required": REQUIRED,
            "type": "object",
        },
    ),
    "dict": (FORECAST_DICT, "forecast", copy.deepcopy(FORECAST_DICT["parameters"])),
}


def answering(ollama: FakeServer, run: Call) -> None:
    """``ollama`` answers plain text, streamed when ``run`` streams."""
    if run in (stream_sync, stream_async):
        ollama.route("POST", "/api/chat", streamed(fixture("ollama/chat_stream_200.ndjson")))


@EVERY
@pytest.mark.parametrize("form", list(SCHEMAS))
def test_each_tool_s_parameters_reach_ollama_exactly_as_its_json_schema(
    ollama: FakeServer, run: Call, form: str
) -> None:
    answering(ollama, run)
    tool, name, parameters = SCHEMAS[form]
    passed = copy.deepcopy(tool)
    response = run(PROMPT, tools=[tool, WEATHER])
    assert response.success, response.error
    assert sent(ollama)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": "The weather forecast for a place.",
                "parameters": parameters,
            },
        },
        TOOLS_REQUEST["tools"][0],
    ]
    assert tool == passed  # the caller's dict is not touched


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this, and the weather?"},
            {"type": "image", "data": PNG, "media_type": "image/png"},
        ],
    },
    {"role": "assistant", "content": "", "tool_calls": [TOKYO.to_dict()]},
    {"role": "tool", "tool_call_id": TOKYO.id, "content": "11 degrees celsius"},
    {"role": "assistant", "content": "Cold."},
    {"role": "user", "content": "And tomorrow?"},
]


@EVERY
def test_a_call_with_tools_is_the_call_without_them_but_for_the_tools(ollama: FakeServer, run: Call) -> None:
    """Only the tools bypass the SDK's models: the rest of the body (messages, options, the
    top-level fields, as the SDK validates and shapes them: keep_alive 300 goes as 300.0) and
    the headers are what its ``chat`` sends when no tools are sent (tool_choice="none")."""
    options = {"keep_alive": 300, "think": True, "stop": "END", "seed": 7, "num_ctx": 4096}
    answering(ollama, run)
    for choice in ("auto", "none"):
        response = run(CONVERSATION, tools=[forecast], tool_choice=choice, response_format=Capital, **options)
        assert response.error_kind is ErrorKind.INVALID_OUTPUT  # the fixture's reply is no Capital
    with_tools, without = ollama.requests
    assert with_tools.json()["tools"][0]["function"]["name"] == "forecast" and without.json()["tools"] == []
    assert {**with_tools.json(), "tools": []} == without.json()
    assert without.json()["keep_alive"] == 300.0 and without.json()["messages"][1]["images"] == [PNG64]
    assert without.json()["messages"][2:4] == [
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}]},
        {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"},
    ]
    assert {**with_tools.headers, "Content-Length": ""} == {**without.headers, "Content-Length": ""}


@EVERY
@pytest.mark.parametrize(
    ("reply", "kind", "words"),
    [
        (ollama_reply("error_model_not_found_404.json", 404), ErrorKind.NOT_FOUND, "ollama pull llama3.2"),
        (ollama_reply("error_server_busy_503.json", 503), ErrorKind.OVERLOADED, "OLLAMA_MAX_QUEUE"),
        (Reply(200, b"{trunc", dict(NDJSON)), ErrorKind.SERVER, "could not read"),
    ],
    ids=["404", "503", "malformed"],
)
def test_a_failure_of_a_call_with_tools_is_what_it_was(
    ollama: FakeServer, run: Call, reply: Reply, kind: ErrorKind, words: str
) -> None:
    """Sent by the SDK's own request method, a call with tools fails as one without them does."""
    ollama.route("POST", "/api/chat", reply)
    response = run(PROMPT, tools=[forecast])
    assert response.error_kind is kind
    assert words in (response.error or "")
    assert response.exception is not None
    assert response.exception.__cause__ is None and response.exception.__context__ is None


@STREAMED
def test_an_error_in_a_stream_with_tools_is_a_server_error(ollama: FakeServer, run: Call) -> None:
    ollama.route("POST", "/api/chat", streamed(fixture("ollama/error_midstream_200.ndjson")))
    response = run(PROMPT, tools=[forecast])
    assert response.error_kind is ErrorKind.SERVER
    assert "failed while generating" in (response.error or "")


@EVERY
def test_a_call_with_tools_to_no_server_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, run: Call
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port}")
    response = run(PROMPT, tools=[forecast])
    assert response.error_kind is ErrorKind.CONNECTION
    assert "ollama serve" in (response.error or "")


@EVERY
@pytest.mark.parametrize(
    ("options", "tool", "words"),
    [
        ({"keep_alive": [1]}, WEATHER, "the ollama SDK refused keep_alive=[1]"),
        ({}, {"name": "when", "parameters": {"type": "object", "default": {1, 2}}}, "TypeError: Object of type set"),
        (
            {},
            {"name": "when", "parameters": {"type": "object", "properties": {"n": {"maximum": float("inf")}}}},
            "ValueError: Out of range",
        ),
    ],
    ids=["sdk-refuses", "not-json", "not-finite"],
)
def test_a_call_with_tools_that_cannot_be_sent_is_refused_before_sending(
    ollama: FakeServer, run: Call, options: dict[str, Any], tool: dict[str, Any], words: str
) -> None:
    """What the SDK's model refuses is refused as before; a dict tool's schema that is no JSON
    data (the SDK's Tool used to drop such keywords unsaid) is the caller's error, not a reply
    chatplug could not read."""
    response = run(PROMPT, tools=[tool], **options)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert words in (response.error or "") and "nothing was sent" in (response.error or "").lower()
    assert ollama.requests == []


def test_an_sdk_without_the_private_parts_is_said_and_its_chat_sends_the_tools(
    ollama: FakeServer, chatplug_log: pytest.LogCaptureFixture
) -> None:
    """The guard around the SDK's private ``ChatRequest`` and ``_request``: an SDK without them
    (a stand-in module here; the installed SDK is not touched) is said in a warning, and its
    ``chat`` sends the tools as its ``Tool`` model keeps them."""
    from chatplug._core.internals import forget
    from chatplug.backends.ollama import OllamaBackend, _chat_request_model

    forget()  # the warning is said once a process: said again here
    assert _chat_request_model(ollama_sdk) is ollama_sdk._types.ChatRequest
    assert chatplug_log.records == []
    stand_in = types.SimpleNamespace(Client=ollama_sdk.Client, AsyncClient=ollama_sdk.AsyncClient, _types=None)
    assert _chat_request_model(stand_in) is None  # type: ignore[arg-type]
    (warning,) = chatplug_log.records
    assert warning.levelno == logging.WARNING and "anyOf, $ref, default" in warning.getMessage()

    backend = OllamaBackend()
    backend._chat_request = None  # what __init__ sets with such an SDK
    request = ChatRequest(messages=({"role": "user", "content": PROMPT},), model="llama3.2", tools=(WEATHER_TOOL,))
    try:
        assert backend.complete(request).content
    finally:
        backend.close()
    assert sent(ollama)["tools"] == TOOLS_REQUEST["tools"]
