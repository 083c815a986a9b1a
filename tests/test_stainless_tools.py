"""Tools, tool results, images and structured output through the openai and anthropic backends:
their real SDKs over a socket, against the fake server answering with the recorded tool replies
and streams (byte for byte). What is sent is compared with the recorded requests; every call is
made sync and async, whole and streamed.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from chatplug import (
    ChatChunk,
    ErrorKind,
    LLMResponse,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI, REQUEST_ID, WEATHER, Provider, both, provider_server

PROMPT = "What's the weather in Tokyo?"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ENCODED = base64.b64encode(PNG).decode()
SSE = "text/event-stream; charset=utf-8"


class Capital(BaseModel):
    """The capital of a country."""

    city: str
    country: str


@dataclass(frozen=True)
class Wire:
    """A provider's recorded tool exchanges (see tests/fixtures/<backend>/) and what they say."""

    provider: Provider
    model: str  # the model the recorded requests asked for
    tools_request: str  # a whole call with tools and tool_choice "auto"
    stream_request: str | None  # a streamed call with tools (None: the whole call's, streamed)
    tool_reply: str
    tool_stream: str
    result_request: str  # the tool result sent back after the recorded reply
    call_id: str  # the call in the recorded reply
    stream_call_id: str  # the call in the recorded stream
    text: str  # the text the model wrote alongside its call
    tokens: tuple[int, int]  # the recorded reply's (prompt, completion) tokens
    stream_tokens: tuple[int, int]
    success: str  # a plain text reply, whose text the structured-output tests replace

    def __str__(self) -> str:  # the test id
        return self.provider.backend

    def recorded(self, name: str) -> dict[str, Any]:
        return json.loads(fixture(f"{self.provider.backend}/{name}"))  # type: ignore[no-any-return]

    def streamed_request(self) -> dict[str, Any]:
        if self.stream_request is not None:
            return self.recorded(self.stream_request)
        return {**self.recorded(self.tools_request), "stream": True}

    def stream_reply(self) -> Reply:
        headers = {"Content-Type": SSE, self.provider.request_id_header: REQUEST_ID}
        return Reply(200, fixture(f"{self.provider.backend}/{self.tool_stream}"), headers, chunked=True)

    def text_reply(self, text: str) -> Reply:
        """The recorded plain reply, with ``text`` as the model's reply."""
        body = self.recorded(self.success)
        if self.provider is OPENAI:
            body["choices"][0]["message"]["content"] = text
        else:
            body["content"][0]["text"] = text
        return self.provider.reply(json.dumps(body).encode())


OPENAI_WIRE = Wire(
    OPENAI, "gpt-4o-mini", "chat_tools_request.json", "chat_tool_stream_request.json", "chat_tool_nonstream_200.json",
    "chat_tool_stream_200.sse", "chat_tool_result_request.json", "call_15X0Q2MmkK1IeFfiol9LFl00",
    "call_qLFv8oQOs68qRuEVmG8TuE00", "", (61, 15), (61, 15), "chat_nonstream_200.json",
)  # fmt: skip
ANTHROPIC_WIRE = Wire(
    ANTHROPIC, "claude-sonnet-4-20250514", "messages_tools_request.json", None, "messages_tool_nonstream_200.json",
    "messages_tool_stream_200.sse", "messages_tool_result_request.json", "toolu_01XLb9pzgfLa2EMyqWot6E00",
    "toolu_01N2eM4V43kGCDkq2Lw7Ch00", "I'll check the weather in Tokyo.", (394, 66), (394, 67),
    "messages_nonstream_200.json",
)  # fmt: skip


@pytest.fixture(params=[OPENAI_WIRE, ANTHROPIC_WIRE], ids=str)
def wire(request: pytest.FixtureRequest) -> Wire:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The provider's fake server, answering with its recorded tool call."""
    for served in provider_server(monkeypatch, wire.provider):
        wire.provider.route(served, wire.provider.reply(wire.tool_reply))
        yield served


def sent(server: FakeServer, like: dict[str, Any]) -> list[dict[str, Any]]:
    """Each request body sent, cut to the fields of the recorded request ``like`` (chatplug adds
    its own: temperature, a token limit)."""
    return [{key: body[key] for key in like if key in body} for body in (r.json() for r in server.requests)]


def stream_both(messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> list[tuple[list[ChatChunk], LLMResponse]]:
    """The chunks and the final response of the same call, streamed sync and async."""
    with stream_completion_with_messages_sync(messages, *args, **kwargs) as stream:
        chunks = list(stream)
    synced = (chunks, stream.response)

    async def run() -> tuple[list[ChatChunk], LLMResponse]:
        async with stream_completion_with_messages_async(messages, *args, **kwargs) as astream:
            got = [chunk async for chunk in astream]
        return got, astream.response

    return [synced, asyncio.run(run())]


def check_tool_call(wire: Wire, response: LLMResponse, call_id: str, tokens: tuple[int, int]) -> None:
    assert response.success, response.error
    assert response.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [(call_id, "get_weather", {"city": "Tokyo"})]
    assert response.content == wire.text
    assert (response.prompt_tokens, response.completion_tokens) == tokens
    assert response.backend == wire.provider.backend


# -- tools: the request, the reply, the stream, the result sent back -------------------------


def test_tools_are_sent_as_recorded_and_the_call_comes_back_parsed(wire: Wire, server: FakeServer) -> None:
    for response in both(PROMPT, wire.model, max_tokens=1024, tools=[WEATHER], tool_choice="auto"):
        check_tool_call(wire, response, wire.call_id, wire.tokens)
    recorded = wire.recorded(wire.tools_request)
    assert sent(server, recorded) == [recorded, recorded]


def test_a_streamed_tool_call_is_sent_as_recorded_and_assembled(wire: Wire, server: FakeServer) -> None:
    wire.provider.route(server, wire.stream_reply())
    choice = {} if wire.stream_request else {"tool_choice": "auto"}  # as each recording asked
    messages = [{"role": "user", "content": PROMPT}]
    for chunks, response in stream_both(messages, wire.model, max_tokens=1024, tools=[WEATHER], **choice):
        check_tool_call(wire, response, wire.stream_call_id, wire.stream_tokens)
        assert "".join(chunk.text for chunk in chunks) == wire.text  # the call's pieces are no text
    recorded = wire.streamed_request()
    assert sent(server, recorded) == [recorded, recorded]


def test_the_tool_result_goes_back_as_recorded(wire: Wire, server: FakeServer) -> None:
    wire.provider.route(server, *[wire.provider.reply(wire.tool_reply)] * 2, wire.text_reply("It is 11 degrees."))
    firsts = both(PROMPT, wire.model, max_tokens=1024, tools=[WEATHER])
    histories = [
        [
            {"role": "user", "content": PROMPT},
            first.message,  # the reply as it came, appended as is
            {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "11 degrees celsius"},
        ]
        for first in firsts
    ]
    kept = copy.deepcopy(histories)
    options: dict[str, Any] = {"model_name": wire.model, "max_tokens": 1024, "tools": [WEATHER]}
    seconds = [
        generate_completion_with_messages_sync(histories[0], **options),
        asyncio.run(generate_completion_with_messages_async(histories[1], **options)),
    ]
    assert [(r.content, r.finish_reason, r.tool_calls) for r in seconds] == [("It is 11 degrees.", "stop", [])] * 2
    assert histories == kept
    recorded = wire.recorded(wire.result_request)
    if wire.provider is OPENAI:
        # OpenAI's recording leaves an empty content out; chatplug sends null, which OpenAI takes
        # too and llama.cpp's server requires (it refuses an assistant message without the key).
        recorded["messages"][1] = {"role": "assistant", "content": None, **recorded["messages"][1]}
    assert sent(server, recorded)[2:] == [recorded, recorded]


#: Two calls answered in one go, then a user message: how each provider takes them.
TWO_RESULTS: list[Any] = [
    {"role": "user", "content": "Weather in Tokyo and Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "name": "get_weather", "arguments": {"city": "Tokyo"}},
        {"id": "c2", "name": "get_weather", "arguments": {"city": "Oslo"}},
    ]},
    {"role": "tool", "tool_call_id": "c1", "content": "11 degrees"},
    {"role": "tool", "tool_call_id": "c2", "content": "-3 degrees"},
    {"role": "user", "content": "Which is warmer?"},
]  # fmt: skip
TWO_RESULTS_SENT: dict[str, list[Any]] = {
    "openai": [
        {"role": "user", "content": "Weather in Tokyo and Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "11 degrees"},
        {"role": "tool", "tool_call_id": "c2", "content": "-3 degrees"},
        {"role": "user", "content": "Which is warmer?"},
    ],
    "anthropic": [  # turns alternate: the two results and the question make one user turn
        {"role": "user", "content": "Weather in Tokyo and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Tokyo"}},
            {"type": "tool_use", "id": "c2", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "11 degrees"}]},
            {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "-3 degrees"}]},
            {"type": "text", "text": "Which is warmer?"},
        ]},
    ],
}  # fmt: skip


def test_consecutive_tool_results(wire: Wire, server: FakeServer) -> None:
    wire.provider.route(server, wire.text_reply("Tokyo."))
    assert all(response.success for response in both(TWO_RESULTS, tools=[WEATHER]))
    assert [r.json()["messages"] for r in server.requests] == [TWO_RESULTS_SENT[wire.provider.backend]] * 2


def test_anthropic_still_joins_plain_turns_and_leaves_out_empty_text(anthropic_server: FakeServer) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "c1", "name": "get_weather",
                                                                       "arguments": {"city": "Rome"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
    ]  # fmt: skip
    ANTHROPIC.route(anthropic_server, ANTHROPIC_WIRE.text_reply("Sunny."))
    assert all(response.success for response in both(messages, tools=[WEATHER]))
    body = anthropic_server.requests[0].json()
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": "Hi\n\nWeather?"},  # plain text joined, as ever
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]},  # no empty text block
    ]  # fmt: skip


CHOICES: dict[str, dict[str, Any]] = {
    "openai": {"auto": "auto", "required": "required", "none": "none",
               "get_weather": {"type": "function", "function": {"name": "get_weather"}}},
    "anthropic": {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"},
                  "get_weather": {"type": "tool", "name": "get_weather"}},
}  # fmt: skip


@pytest.mark.parametrize("choice", ["auto", "required", "none", "get_weather", None])
def test_tool_choice(wire: Wire, server: FakeServer, choice: str | None) -> None:
    for response in both(PROMPT, tools=[WEATHER], **({"tool_choice": choice} if choice else {})):
        assert response.success, response.error
    for request in server.requests:
        body = request.json()
        if choice is None:
            assert "tool_choice" not in body  # the provider's default
        else:
            assert body["tool_choice"] == CHOICES[wire.provider.backend][choice]


def test_a_tool_without_a_description_is_sent_without_one(wire: Wire, server: FakeServer) -> None:
    assert both(PROMPT, tools=[{"name": "now", "parameters": {"type": "object", "properties": {}}}])[0].success
    (tool,) = server.requests[0].json()["tools"]
    assert "description" not in json.dumps(tool)


# -- images ----------------------------------------------------------------------------------


IMAGES_SENT = {
    "openai": [
        {"type": "text", "text": "What is in these?"},
        *[{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{ENCODED}"}}] * 3,
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ],
    "anthropic": [
        {"type": "text", "text": "What is in these?"},
        *[{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ENCODED}}] * 3,
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ],
}


def test_image_parts_from_a_path_bytes_or_a_url(wire: Wire, server: FakeServer, tmp_path: Path) -> None:
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    content: list[Any] = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "path": str(image)},
        {"type": "image", "data": PNG, "media_type": "image/png"},
        {"type": "image", "url": f"data:image/png;base64,{ENCODED}"},  # Anthropic: a base64 source
        {"type": "image", "url": "https://example.com/cat.jpg"},
    ]
    wire.provider.route(server, wire.text_reply("A dot and a cat."))
    messages: list[Any] = [{"role": "user", "content": content}]
    for response in both(messages):
        assert response.success and response.content == "A dot and a cat."
    expected = [{"role": "user", "content": IMAGES_SENT[wire.provider.backend]}]
    assert [r.json()["messages"] for r in server.requests] == [expected] * 2


def test_an_image_in_a_tool_result(wire: Wire, server: FakeServer) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Draw a dot."},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "draw", "arguments": {}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "image", "data": PNG, "media_type": "image/png"}]},
    ]
    tools = [{"name": "draw", "parameters": {"type": "object"}}]
    responses = both(history, tools=tools)
    if wire.provider is OPENAI:  # OpenAI takes only text there: refused, not dropped
        for response in responses:
            assert response.error_kind is ErrorKind.INVALID_INPUT
            assert "only text in a tool result" in str(response.error)
        assert server.requests == []
        return
    assert all(response.success for response in responses)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ENCODED}}
    assert server.requests[0].json()["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [image]}],
    }


# -- structured output ----------------------------------------------------------------------


SCHEMA_SENT = {
    "openai": ("response_format", {"type": "json_schema", "json_schema": {
        "name": "Capital", "schema": Capital.model_json_schema(), "strict": False,
    }}),
    "anthropic": ("output_config", {"format": {"type": "json_schema", "schema": {
        "type": "object", "title": "Capital", "description": "The capital of a country.",
        "properties": {"city": {"type": "string", "title": "City"}, "country": {"type": "string", "title": "Country"}},
        "required": ["city", "country"], "additionalProperties": False,  # Anthropic's subset: closed objects
    }}}),
}  # fmt: skip


def test_structured_output_sends_the_schema_and_parses_the_reply(wire: Wire, server: FakeServer) -> None:
    wire.provider.route(server, wire.text_reply('{"city": "Paris", "country": "France"}'))
    for response in both("Capital of France?", response_format=Capital):
        assert response.success, response.error
        assert response.parsed == Capital(city="Paris", country="France")
    field, value = SCHEMA_SENT[wire.provider.backend]
    assert [r.json()[field] for r in server.requests] == [value] * 2


def test_structured_output_that_does_not_fit_is_invalid_output_with_the_text_kept(
    wire: Wire, server: FakeServer
) -> None:
    wire.provider.route(server, wire.text_reply('{"city": "Paris"}'))
    for response in both("Capital of France?", response_format=Capital):
        assert response.error_kind is ErrorKind.INVALID_OUTPUT and "country" in str(response.error)
        assert response.content == '{"city": "Paris"}' and response.parsed is None


def test_a_schema_dict_with_an_odd_name(wire: Wire, server: FakeServer) -> None:
    schema = {"title": "a capital / city", "type": "object", "properties": {"n": {"type": "integer"}}}
    wire.provider.route(server, wire.text_reply('{"n": 3}'))
    assert both("Hi", response_format=schema)[0].parsed == {"n": 3}
    body = server.requests[0].json()
    if wire.provider is OPENAI:
        assert body["response_format"]["json_schema"]["name"] == "a_capital___city"  # OpenAI's name rules
    else:
        assert body["output_config"]["format"]["schema"]["additionalProperties"] is False


def test_anthropic_keeps_a_callers_own_output_config(anthropic_server: FakeServer) -> None:
    ANTHROPIC.route(anthropic_server, ANTHROPIC_WIRE.text_reply('{"city": "Paris", "country": "France"}'))
    assert both("Hi", response_format=Capital, output_config={"effort": "low"})[0].success
    config = anthropic_server.requests[0].json()["output_config"]
    assert config["effort"] == "low" and config["format"]["type"] == "json_schema"


def test_plain_requests_carry_none_of_it(wire: Wire, server: FakeServer) -> None:
    wire.provider.route(server, wire.text_reply("Hello."))
    assert both("Hi")[0].success
    body = server.requests[0].json()
    assert not {"tools", "tool_choice", "response_format", "output_config"} & set(body)
    assert body["messages"] == [{"role": "user", "content": "Hi"}]


def test_a_callers_strict_reaches_the_provider(wire: Wire, server: FakeServer) -> None:
    """A tool dict or OpenAI's response_format wrapper that says "strict": true is sent strict
    (OpenAI's strict mode, Anthropic's strict tool use); without it, not."""
    strict_tool = {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}, "strict": True}}
    loose_tool = {"name": "find", "parameters": {"type": "object"}}
    both("Hi", tools=[strict_tool, loose_tool])
    for request in server.requests:
        strict, loose = request.json()["tools"]
        if wire.provider is OPENAI:
            assert (strict["function"]["strict"], loose["function"]["strict"]) == (True, False)
        else:
            assert strict["strict"] is True and "strict" not in loose
    if wire.provider is OPENAI:
        server.requests.clear()
        wire.provider.route(server, wire.text_reply('{"city": "Paris"}'))
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        wrapped = {"type": "json_schema", "json_schema": {"name": "City", "strict": True, "schema": schema}}
        for response in both("Capital of France?", response_format=wrapped):
            assert response.success, response.error
        assert [r.json()["response_format"]["json_schema"]["strict"] for r in server.requests] == [True, True]


def test_a_strict_that_is_no_bool_is_refused_before_sending(wire: Wire, server: FakeServer) -> None:
    tool = {"name": "look", "parameters": {"type": "object"}, "strict": "yes"}
    for response in both("Hi", tools=[tool]):
        assert response.error_kind is ErrorKind.INVALID_INPUT
        assert "'strict' must be true or false" in str(response.error)
    assert server.requests == []
