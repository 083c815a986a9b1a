"""Tools, structured output and images through the pipeline, on the ``testing`` backend: what
the caller passes, what a backend receives, what comes back, and the tool-running loop."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import chatplug
from chatplug import (
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ChatResult,
    ErrorKind,
    ToolCall,
    ToolCallDelta,
    generate_completion_sync,
    generate_completion_with_messages_sync,
    hookimpl,
    run_tools_async,
    run_tools_sync,
    stream_completion_sync,
)
from chatplug.testing import scripted
from chatplug.toolkit import thaw

from .fakeserver import FakeServer
from .providers import ANTHROPIC, OPENAI, Provider

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name, e.g. Tokyo.
        unit: celsius or fahrenheit.
    """
    return f"11 degrees {unit} in {city}"


class Capital(BaseModel):
    """The capital of a country."""

    city: str
    country: str


def test_a_function_becomes_a_tool_from_its_signature_and_docstring() -> None:
    with scripted("ok") as fake:
        generate_completion_sync("Weather?", tools=[get_weather], tool_choice="get_weather")
    (request,) = fake.requests
    (tool,) = request.tools
    assert (tool.name, tool.description) == ("get_weather", "Get the current weather in a city.")
    assert tool.schema() == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "The city's name, e.g. Tokyo."},
            "unit": {"type": "string", "default": "celsius", "description": "celsius or fahrenheit."},
        },
        "required": ["city"],
    }
    assert request.tool_choice == "get_weather"


def test_pydantic_models_and_dicts_are_tools_too() -> None:
    openai_style = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    plain = {"name": "search", "description": "Search.", "parameters": {"type": "object", "properties": {}}}
    tools = [Capital, openai_style, plain]
    kept = copy.deepcopy(tools)
    with scripted("ok") as fake:
        generate_completion_sync("Hi", tools=tools)
    assert [(t.name, t.description) for t in fake.requests[0].tools] == [
        ("Capital", "The capital of a country."),
        ("lookup", ""),
        ("search", "Search."),
    ]
    assert fake.requests[0].tools[0].schema()["required"] == ["city", "country"]
    assert tools == kept  # nothing the caller passed is changed


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"tools": "get_weather"}, "tools must be a list"),
        ({"tools": [42]}, "tools[0] must be a function"),
        ({"tools": [{"parameters": {}}]}, "tools[0] must have a 'name'"),
        ({"tools": [get_weather, get_weather]}, "two tools named 'get_weather'"),
        ({"tools": [get_weather], "tool_choice": "always"}, "tool_choice must be one of"),
        ({"tool_choice": "auto"}, "tool_choice needs tools="),
        ({"response_format": "json"}, "response_format must be a pydantic model class or a JSON-schema dict"),
        ({"response_format": Capital(city="x", country="y")}, "response_format must be"),
    ],
)
def test_bad_tools_and_formats_are_refused_before_sending(options: dict[str, Any], says: str) -> None:
    with scripted() as fake:
        response = generate_completion_sync("Hi", **options)
    assert response.error_kind is ErrorKind.INVALID_INPUT and says in (response.error or "")
    assert fake.requests == []


def test_a_tool_call_comes_back_parsed_and_goes_back_as_it_came() -> None:
    with scripted(ToolCall("call_1", "get_weather", {"city": "Tokyo"}), "It is 11 degrees.") as fake:
        first = generate_completion_sync("Weather in Tokyo?", tools=[get_weather])
        assert first.success and first.finish_reason == "tool_calls"
        (call,) = first.tool_calls
        assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", {"city": "Tokyo"})
        history = [
            {"role": "user", "content": "Weather in Tokyo?"},
            first.message,
            {"role": "tool", "tool_call_id": call.id, "content": get_weather(**call.arguments)},
        ]
        second = generate_completion_with_messages_sync(history, tools=[get_weather])
    assert second.content == "It is 11 degrees." and second.finish_reason == "stop"
    sent = thaw(fake.requests[1].messages)
    assert sent[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Tokyo"}}],
    }
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "name": "get_weather",
        "content": "11 degrees celsius in Tokyo",
    }


def test_openai_shaped_tool_calls_are_taken_in_history() -> None:
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c9", "content": "cold"},
    ]  # fmt: skip
    with scripted("ok") as fake:
        assert generate_completion_with_messages_sync(history, tools=[get_weather]).success
    assert thaw(fake.requests[0].messages[1]["tool_calls"]) == [
        {"id": "c9", "name": "get_weather", "arguments": {"city": "Oslo"}}
    ]


def test_unparseable_tool_arguments_are_a_failure_that_keeps_the_raw_text() -> None:
    reply = ChatResult("", "m", tool_calls=(ToolCallDelta(0, "c1", "get_weather", '{"city": "Tok'),))
    with scripted(reply):
        response = generate_completion_sync("Hi", tools=[get_weather])
    assert not response.success and response.error_kind is ErrorKind.INVALID_OUTPUT
    assert response.tool_calls[0].raw_arguments == '{"city": "Tok' and response.tool_calls[0].arguments == {}
    with pytest.raises(chatplug.InvalidOutputError):
        response.raise_for_error()


def test_streamed_tool_call_pieces_are_assembled() -> None:
    pieces = [
        ChatChunk(tool_calls=(ToolCallDelta(0, "c1", "get_weather", ""),)),
        ChatChunk(tool_calls=(ToolCallDelta(0, arguments='{"ci'),)),
        ChatChunk(tool_calls=(ToolCallDelta(0, arguments='ty": "Rome"}'),)),
        ChatChunk(tool_calls=(ToolCallDelta(1, "c2", "get_weather", '{"city": "Oslo"}'),), finish_reason="tool_use"),
    ]
    with scripted(pieces), stream_completion_sync("Hi", tools=[get_weather]) as stream:
        assert list(stream) == []  # no text, no reasoning
    response = stream.response
    assert response.success and response.finish_reason == "tool_calls"
    assert [(c.id, c.arguments) for c in response.tool_calls] == [("c1", {"city": "Rome"}), ("c2", {"city": "Oslo"})]


def test_structured_output_from_a_pydantic_model() -> None:
    with scripted('{"city": "Paris", "country": "France"}', '```json\n{"city": "Rome", "country": "Italy"}\n```'):
        response = generate_completion_sync("Capital of France?", response_format=Capital)
        fenced = generate_completion_sync("Capital of Italy?", response_format=Capital)
    assert response.parsed == Capital(city="Paris", country="France")
    assert fenced.parsed == Capital(city="Rome", country="Italy")
    assert response.to_dict()["parsed"] == {"city": "Paris", "country": "France"}


def test_structured_output_from_a_schema_dict_and_its_failures() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with scripted('{"n": 3}', '{"n": "three"}', "three", '{"m": 1}') as fake:
        good = generate_completion_sync("Hi", response_format=schema)
        wrong_type = generate_completion_sync("Hi", response_format=schema)
        not_json = generate_completion_sync("Hi", response_format=schema)
        missing = generate_completion_sync("Hi", response_format=schema)
    assert good.parsed == {"n": 3}
    assert thaw(fake.requests[0].response_format.schema) == schema
    for response, says in (
        (wrong_type, "at $.n, 'three' is not of type 'integer' (keyword 'type'"),
        (not_json, "not JSON"),
        (missing, "at $, 'n' is a required property (keyword 'required'"),
    ):
        assert response.error_kind is ErrorKind.INVALID_OUTPUT and says in (response.error or "")
    assert not_json.content == "three"  # the raw text is kept


def test_a_structured_stream_sets_parsed_on_its_final_response() -> None:
    with (
        scripted(['{"city": "Par', 'is", "country": "France"}']),
        stream_completion_sync("Hi", response_format=Capital) as stream,
    ):
        text = "".join(chunk.text for chunk in stream)
    assert text == '{"city": "Paris", "country": "France"}'
    assert stream.response.parsed == Capital(city="Paris", country="France")


# -- images and message shapes -------------------------------------------------------------


def test_image_parts_from_a_path_bytes_base64_or_a_url(tmp_path: Path) -> None:
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    encoded = base64.b64encode(PNG).decode()
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "path": str(image)},
        {"type": "image", "data": PNG, "media_type": "image/png"},
        {"type": "image", "data": encoded, "media_type": "image/png"},
        {"type": "image", "url": "https://example.com/cat.jpg"},
    ]
    with scripted("a dot") as fake:
        assert generate_completion_with_messages_sync([{"role": "user", "content": content}]).success
    assert thaw(fake.requests[0].messages[0]["content"]) == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "media_type": "image/png", "data": encoded},
        {"type": "image", "media_type": "image/png", "data": encoded},
        {"type": "image", "media_type": "image/png", "data": encoded},
        {"type": "image", "url": "https://example.com/cat.jpg"},
    ]
    assert fake.prompts == ["What is in these?"]


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"role": "tool", "content": "42"}, "without a 'tool_call_id'"),
        ({"role": "user", "content": [{"type": "image", "url": "https://x/y.png", "path": "y.png"}]}, "exactly one of"),
        ({"role": "user", "content": [{"type": "image", "path": "/no/such/file.png"}]}, "is not a file"),
        ({"role": "user", "content": [{"type": "audio", "data": "..."}]}, "content[0] must be"),
        ({"role": "user", "content": [{"type": "image", "data": b"x"}]}, "no media_type"),
        ({"role": "user", "content": [{"type": "image", "data": "not base64!", "media_type": "image/png"}]}, "base64"),
        ({"role": "user", "content": [{"type": "image", "url": "ftp://x/y.png"}]}, "http(s) or data: URL"),
        ({"role": "assistant", "content": [{"type": "image", "url": "https://x/y.png"}]}, "images go in user"),
        ({"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}, "must have 'id', 'name' and 'arguments'"),
        ({"role": "user", "content": "Hi", "tool_call_id": "c1"}, "unsupported key(s) 'tool_call_id'"),
    ],
)
def test_bad_message_shapes_are_refused_with_a_specific_message(message: dict[str, Any], says: str) -> None:
    with scripted() as fake:
        response = generate_completion_with_messages_sync([message])
    assert response.error_kind is ErrorKind.INVALID_INPUT and says in (response.error or ""), response.error
    assert fake.requests == []


class TextOnly(ChatBackend):
    default_model = "text-1"

    def complete(self, request: ChatRequest) -> ChatResult:
        raise AssertionError("never reached: the pipeline refuses first")

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        raise AssertionError("never reached")


@pytest.mark.parametrize(
    ("messages", "options", "says"),
    [
        ([{"role": "user", "content": "Hi"}], {"tools": [get_weather]}, "cannot call tools"),
        ([{"role": "user", "content": [{"type": "image", "url": "https://x/y.png"}]}], {}, "cannot take images"),
        ([{"role": "user", "content": "Hi"}], {"response_format": Capital}, "cannot give structured output"),
        ([{"role": "tool", "tool_call_id": "c", "content": "x"}], {}, "cannot call tools"),
    ],
)
def test_a_backend_that_cannot_do_a_feature_says_so(
    messages: list[dict[str, Any]], options: dict[str, Any], says: str
) -> None:
    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("textonly", TextOnly)

    name = chatplug.register_plugin(Plugin(), "textonly-plugin")
    try:
        response = generate_completion_with_messages_sync(messages, backend="textonly", **options)
    finally:
        chatplug.unregister_plugin(name)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert says in (response.error or "") and "'textonly'" in (response.error or "")


# -- running the loop ----------------------------------------------------------------------


def test_run_tools_runs_the_functions_until_a_final_answer() -> None:
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def explode() -> str:
        """Always fails."""
        raise RuntimeError("the tool broke")

    script = [
        [ToolCall("c1", "add", {"a": 2, "b": "3"}), ToolCall("c2", "explode", {})],
        ToolCall("c3", "nope", {}),
        "The sum is 5.",
    ]
    with scripted(*script) as fake:
        run = run_tools_sync("What is 2 + 3?", [add, explode])
    assert run.complete and run.steps == 3 and run.response.content == "The sum is 5."
    results = [m["content"] for m in run.messages if m["role"] == "tool"]
    assert results == [
        "5",
        "Error: RuntimeError: the tool broke",
        "Error: there is no tool named 'nope'; the tools are add, explode.",
    ]
    assert [m["role"] for m in run.messages] == ["user", "assistant", "tool", "tool", "assistant", "tool"]
    assert [t.name for t in fake.requests[0].tools] == ["add", "explode"]


def test_run_tools_async_awaits_async_tools_and_stops_at_the_step_limit() -> None:
    async def fetch(url: str) -> str:
        """Fetch a page."""
        await asyncio.sleep(0)
        return f"page at {url}"

    loop = [ToolCall(f"c{i}", "fetch", {"url": f"https://x/{i}"}) for i in range(3)]
    with scripted(*loop):
        run = asyncio.run(run_tools_async([{"role": "user", "content": "Browse."}], [fetch], max_steps=2))
    assert not run.complete and run.steps == 2 and run.response.tool_calls[0].id == "c1"
    assert [m["content"] for m in run.messages if m["role"] == "tool"] == ["page at https://x/0", "page at https://x/1"]


def test_run_tools_never_raises() -> None:
    with scripted(chatplug.RateLimitError("slow down")):
        run = run_tools_sync("Hi", [get_weather])
    assert not run.complete and run.response.error_kind is ErrorKind.RATE_LIMIT
    bad = run_tools_sync("Hi", [])
    assert bad.response.error_kind is ErrorKind.INVALID_INPUT and bad.steps == 0


# -- a tool_choice that forces a call holds for the first step only -------------------------


FORCED = ("required", "get_weather")


def obedient(request: ChatRequest) -> ToolCall | str:
    """A model as ``tool_choice`` makes it: a tool call while one is forced, else the answer."""
    if request.tool_choice in FORCED:
        return ToolCall("c1", "get_weather", {"city": "Tokyo"})
    return "It is 11 degrees in Tokyo."


@pytest.mark.parametrize("choice", FORCED)
def test_a_forced_tool_choice_holds_for_the_first_step_then_the_model_may_answer(choice: str) -> None:
    with scripted(default=obedient) as fake:
        runs = [
            run_tools_sync("Weather in Tokyo?", [get_weather], tool_choice=choice, max_steps=4),
            asyncio.run(run_tools_async("Weather in Tokyo?", [get_weather], tool_choice=choice, max_steps=4)),
        ]
        for run in runs:  # not stopped by the step limit with the model forced to call tools
            assert run.complete and run.steps == 2 and run.response.content == "It is 11 degrees in Tokyo."
            assert [m["role"] for m in run.messages] == ["user", "assistant", "tool"]
        assert [request.tool_choice for request in fake.requests] == [choice, "auto"] * 2
        fake.script(ToolCall("c1", "get_weather", {"city": "Oslo"}), "Cold.")
        assert run_tools_sync("Weather in Oslo?", [get_weather]).complete
        assert [request.tool_choice for request in fake.requests[4:]] == [None, None]  # none chosen: none sent


#: What each provider's wire says for a forced choice, and for "auto".
WIRE_CHOICES: dict[str, dict[str, Any]] = {
    "openai": {"required": "required", "get_weather": {"type": "function", "function": {"name": "get_weather"}},
               "auto": "auto"},
    "anthropic": {"required": {"type": "any"}, "get_weather": {"type": "tool", "name": "get_weather"},
                  "auto": {"type": "auto"}},
}  # fmt: skip
TOOL_REPLY = {"openai": "chat_tool_nonstream_200.json", "anthropic": "messages_tool_nonstream_200.json"}


@pytest.mark.parametrize("choice", FORCED)
@pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def test_on_the_wire_the_first_request_forces_the_call_and_the_next_says_auto(
    provider: Provider, choice: str, request: pytest.FixtureRequest
) -> None:
    server: FakeServer = request.getfixturevalue(f"{provider.backend}_server")
    runs = []
    for run_async in (False, True):  # the recorded tool call, then the recorded answer
        provider.route(server, provider.reply(TOOL_REPLY[provider.backend]), provider.reply(provider.success))
        prompt, tools = "What's the weather in Tokyo?", [get_weather]
        if run_async:
            runs.append(asyncio.run(run_tools_async(prompt, tools, tool_choice=choice, max_steps=3)))
        else:
            runs.append(run_tools_sync(prompt, tools, tool_choice=choice, max_steps=3))
    for run in runs:
        assert run.complete and run.steps == 2, run.response.error
        assert run.response.content.startswith("Rayleigh scattering")
        assert run.messages[-1]["content"] == "11 degrees celsius in Tokyo"
    wire = WIRE_CHOICES[provider.backend]
    assert [r.json()["tool_choice"] for r in server.requests] == [wire[choice], wire["auto"]] * 2
