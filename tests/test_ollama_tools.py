"""Tools, tool results, images and structured output on the ollama backend: the real ollama SDK
over a socket against a fake Ollama server answering with the recorded fixtures, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import ollama as ollama_sdk
import pytest
from pydantic import BaseModel

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
    """The chunks the backend itself streams (the dispatcher gives callers the text ones only)."""
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


def test_the_sdk_s_lost_schema_keywords_are_logged(
    tool_server: FakeServer, chatplug_log: pytest.LogCaptureFixture
) -> None:
    def get_weather(city: str, unit: str = "celsius") -> str:
        """Get the weather."""
        return unit

    assert generate_completion_sync(PROMPT, tools=[get_weather]).success
    assert "tool 'get_weather': the SDK sends no additionalProperties, default" in chatplug_log.text
