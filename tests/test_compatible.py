"""The twelve OpenAI-compatible backends (``chatplug.backends.compatible``): each one drives the
real openai SDK over a socket, against a loopback server answering in that provider's own wire
format (tests/fixtures/compatible/INDEX.md says where each body comes from; a provider whose
reply is OpenAI's gets OpenAI's recorded bodies).

Each feature is one test per provider, named as tests/conformance.py reads them:
``test_FEATURE[NAME]`` where the provider does it, ``test_refused_before_sending[NAME-FEATURE]``
where it is refused with ``invalid_input`` before anything is sent. The feature tests make each
call sync and async; the server records each request (path, headers, body), which they check.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import BaseModel

import chatplug
from chatplug import (
    ChatChunk,
    ErrorKind,
    LLMResponse,
    generate_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)
from chatplug.backends.compatible import PROVIDERS
from chatplug.backends.compatible import Provider as Row

from .fakeserver import FakeServer, Recorded, Reply, fixture
from .providers import REQUEST_ID, WEATHER, both, headers_of

BY_NAME = {row.name: row for row in PROVIDERS}
#: A model for the local servers, which name none by default (they serve what was loaded).
LOCAL_MODELS = {"vllm": "Qwen/Qwen2.5-1.5B-Instruct", "lmstudio": "qwen2.5-7b-instruct"}
PLACEHOLDER = "Bearer sk-no-key-needed"  # what a local server gets when no key is set
PROMPT = "Why is the sky blue?"
JSON_HEADERS = {"Content-Type": "application/json", "x-request-id": REQUEST_ID}
SSE_HEADERS = {"Content-Type": "text/event-stream"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ENCODED = base64.b64encode(PNG).decode()
#: The tool of the recorded xai and openrouter replies (charmbracelet/fantasy's), as a caller passes it.
FLORENCE_WEATHER = {
    "name": "weather",
    "description": "Get weather information for a location",
    "parameters": {
        "properties": {"location": {"description": "the city", "type": "string"}},
        "required": ["location"],
        "type": "object",
    },
}


class Capital(BaseModel):
    """The capital of a country."""

    city: str
    country: str


def key_of(row: Row) -> str:
    return f"{row.name}-key-SECRET-7f3a9c"


def model_of(row: Row) -> str:
    """The model a call without one asks for (or, for the local servers, the one the tests name)."""
    return row.default_model or LOCAL_MODELS[row.name]


def named_model(row: Row) -> str | None:
    """The model a call must name: none where the provider has a default."""
    return None if row.default_model else LOCAL_MODELS[row.name]


def base_path(row: Row) -> str:
    """The path of the provider's base URL, which the loopback URL keeps (azure's is the endpoint)."""
    return "" if row.name == "azure" else urlsplit(row.base_url).path.rstrip("/")


def endpoint(row: Row) -> str:
    return "/openai/v1/chat/completions" if row.name == "azure" else f"{base_path(row)}/chat/completions"


def over(rows: list[Row] | tuple[Row, ...]) -> pytest.MarkDecorator:
    """Run the test for each of ``rows``, with its ``wire`` (ids: the provider's name)."""
    return pytest.mark.parametrize("wire", rows, ids=lambda row: row.name, indirect=True)


def json_reply(body: str | bytes, status: int = 200) -> Reply:
    """A fixture (its path under tests/fixtures) or raw bytes, as a JSON reply."""
    return Reply(status, fixture(body) if isinstance(body, str) else body, dict(JSON_HEADERS))


def sse_reply(body: str | bytes) -> Reply:
    """A fixture or raw bytes, as an SSE stream sent in chunks (one per line)."""
    return Reply(200, fixture(body) if isinstance(body, str) else body, dict(SSE_HEADERS), chunked=True)


def with_text(text: str) -> bytes:
    """OpenAI's recorded reply with ``text`` as the model's answer."""
    body = json.loads(fixture("openai/chat_nonstream_200.json"))
    body["choices"][0]["message"]["content"] = text
    return json.dumps(body).encode()


@dataclass
class Wire:
    """A provider's loopback server, its variables pointing at it."""

    row: Row
    server: FakeServer

    @property
    def key(self) -> str:
        return key_of(self.row)

    @property
    def path(self) -> str:
        return endpoint(self.row)

    def answer(self, *replies: Reply) -> None:
        self.server.route("POST", self.path, *replies)

    def bodies(self) -> list[Any]:
        return [request.json() for request in self.server.requests]

    def check_sent(self, count: int, authorization: str | None = None) -> list[Recorded]:
        """``count`` requests were posted to the provider's endpoint (no query: no api-version),
        each with its key as a bearer token."""
        requests = self.server.requests
        assert [(r.method, r.path) for r in requests] == [("POST", self.path)] * count
        assert [headers_of(r)["authorization"] for r in requests] == [authorization or f"Bearer {self.key}"] * count
        return requests


#: Every variable a compatible provider reads, cleared for each test (conftest clears OPENAI_*).
VARIABLES = sorted(
    {name for row in PROVIDERS for name in (row.key_variable, row.url_variable, *row.headers_from.values())}
    | {"OPENAI_ORG_ID", "OPENAI_PROJECT_ID"}
)


@pytest.fixture(autouse=True)
def no_provider_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@contextmanager
def served(row: Row, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    """``row``'s loopback server answering with OpenAI's recorded reply; its base URL variable
    points at it (keeping the real base URL's path), its key variable holds its key, and
    ``LLM_BACKEND`` selects it."""
    server = FakeServer()
    wire = Wire(row, server)
    wire.answer(json_reply("openai/chat_nonstream_200.json"))
    monkeypatch.setenv(row.url_variable, server.url + base_path(row))
    monkeypatch.setenv(row.key_variable, wire.key)
    monkeypatch.setenv("LLM_BACKEND", row.name)
    try:
        yield wire
    finally:
        chatplug.close()
        server.close()


@pytest.fixture
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    with served(request.param, monkeypatch) as served_wire:
        yield served_wire


Streamed = tuple[list[ChatChunk], LLMResponse]


def stream_both(messages: list[dict[str, Any]], *args: Any, **kwargs: Any) -> list[Streamed]:
    """The chunks and the final response of the same call, streamed sync and async."""
    with stream_completion_with_messages_sync(messages, *args, **kwargs) as stream:
        chunks = list(stream)
    synced = (chunks, stream.response)

    async def run() -> Streamed:
        async with stream_completion_with_messages_async(messages, *args, **kwargs) as astream:
            got = [chunk async for chunk in astream]
        return got, astream.response

    return [synced, asyncio.run(run())]


def asked(prompt: str = PROMPT) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}]


# -- text: a whole call, by each way of choosing the backend ---------------------------------


@dataclass(frozen=True)
class Said:
    """A reply's fixture and what it says."""

    body: str
    text: str
    tokens: tuple[int, int]  # (prompt, completion)
    model: str


def limit_name(row: Row) -> str:
    """The name of the output limit: azure serves OpenAI's models, which take only the new one."""
    return "max_completion_tokens" if row.name == "azure" else "max_tokens"


OPENAI_SAID = Said(
    "openai/chat_nonstream_200.json",
    "Rayleigh scattering: air molecules scatter blue light more than red.",
    (25, 14),
    "gpt-4o-mini-2024-07-18",
)
#: The providers whose replies differ from OpenAI's (the rest answer with OPENAI_SAID).
SAID = {
    "groq": Said("compatible/groq/chat_nonstream_200.json", "Olá!", (20, 4), "moonshotai/kimi-k2-instruct-0905"),
    "azure": Said("compatible/azure/chat_nonstream_200.json", "Olá!", (19, 76), "gpt-5-mini-2025-08-07"),
    "deepseek": Said(
        "compatible/deepseek/chat_reasoning_200.json", "Hi! How can I help you today?", (10, 47), "deepseek-v4-flash"
    ),
    "perplexity": Said(
        "compatible/perplexity/chat_nonstream_200.json",
        "Rayleigh scattering: air molecules scatter blue light more than red [1][2].",
        (14, 36),
        "sonar",
    ),
}


@over(PROVIDERS)
def test_text(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend=``, the ``name:model`` prefix and ``LLM_BACKEND`` each reach the provider's
    endpoint with its key, the body OpenAI's (the provider's token limit name, its default model
    when none is given), and the reply's text and usage are read."""
    row = wire.row
    said = SAID.get(row.name, OPENAI_SAID)
    wire.answer(json_reply(said.body))
    monkeypatch.delenv("LLM_BACKEND")
    if not row.default_model:  # a local server serves what it loaded: the call must name it
        for response in both(PROMPT, backend=row.name):
            assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
            assert "no model given" in str(response.error)
        assert wire.server.requests == []
    model = model_of(row)
    responses = both(PROMPT, named_model(row), 0.2, 64, backend=row.name)
    responses += both(PROMPT, f"{row.name}:{model}", 0.2, 64)
    monkeypatch.setenv("LLM_BACKEND", row.name)
    responses += both(PROMPT, named_model(row), 0.2, 64)
    for response in responses:
        assert response.success, response.error
        assert (response.content, response.finish_reason) == (said.text, "stop")
        assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (
            *said.tokens,
            sum(said.tokens),
        )
        assert (response.backend, response.model_used) == (row.name, said.model)
        assert response.reasoning == said_in(fixture(said.body))[0]  # deepseek's is there; never in the text
    sent = {"messages": asked(), "model": model, "temperature": 0.2, limit_name(row): 64}
    assert wire.bodies() == [sent] * 6
    wire.check_sent(6)


# -- a streamed call: usage asked for and read from the last chunks ----------------------------


OPENAI_STREAM = Said("openai/chat_stream_200.sse", "Rayleigh scattering.", (13, 4), "gpt-4o-mini-2024-07-18")
STREAMS = {
    # Groq sends the usage twice: on the finish chunk and in a last chunk with no choices.
    "groq": Said("compatible/groq/chat_stream_200.sse", "Olá!", (20, 4), "moonshotai/kimi-k2-instruct-0905"),
    "deepseek": Said(
        "compatible/deepseek/chat_reasoning_stream_200.sse",
        "Hi! How can I help you today?",
        (10, 47),
        "deepseek-v4-flash",
    ),
}


@over(PROVIDERS)
def test_stream_usage(wire: Wire) -> None:
    row = wire.row
    said = STREAMS.get(row.name, OPENAI_STREAM)
    wire.answer(sse_reply(said.body))
    for chunks, response in stream_both(asked(), named_model(row)):
        assert response.success, response.error
        assert "".join(chunk.text for chunk in chunks) == response.content == said.text
        assert (response.prompt_tokens, response.completion_tokens) == said.tokens
        assert response.usage_reported and response.finish_reason == "stop"
        assert (response.backend, response.model_used) == (row.name, said.model)
    for body in wire.bodies():
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert (body["model"], body[limit_name(row)]) == (model_of(row), 500)
    wire.check_sent(2)


# -- tools, whole and streamed -----------------------------------------------------------------


@dataclass(frozen=True)
class Called:
    """A provider's tool-call replies (whole and streamed) and the call they make."""

    whole: str
    stream: str
    tool: dict[str, Any]
    call_id: str
    stream_call_id: str
    name: str
    arguments: dict[str, Any]


OPENAI_CALLED = Called(
    "openai/chat_tool_nonstream_200.json", "openai/chat_tool_stream_200.sse", WEATHER,
    "call_15X0Q2MmkK1IeFfiol9LFl00", "call_qLFv8oQOs68qRuEVmG8TuE00", "get_weather", {"city": "Tokyo"},
)  # fmt: skip
#: xai's tool calls come with finish_reason "" (LiteLLM's xai/chat/transformation.py).
CALLED = {
    "xai": Called(
        "compatible/xai/chat_tool_empty_finish_200.json", "compatible/xai/chat_tool_stream_empty_finish_200.sse",
        FLORENCE_WEATHER, "call_98286056", "call_51851897", "weather", {"location": "Florence, Italy"},
    ),
}  # fmt: skip
#: What tool_choice="required" becomes (mistral's and fireworks' word is "any").
REQUIRED = {"mistral": "any", "fireworks": "any"}
#: The providers a tool's "strict" is not sent to.
NO_STRICT = {"xai"}
TOOLED = [row for row in PROVIDERS if "tools" in row.capabilities]


def tool_sent(row: Row, tool: dict[str, Any]) -> dict[str, Any]:
    """``tool`` as chat completions take it, after the provider's quirks."""
    function = {"name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]}
    if row.name not in NO_STRICT:
        function["strict"] = False
    return {"type": "function", "function": function}


def check_called(row: Row, called: Called, responses: list[LLMResponse], call_id: str) -> None:
    for response in responses:
        assert response.success, response.error
        assert response.finish_reason == "tool_calls"  # xai's "" too
        assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [(call_id, called.name, called.arguments)]
        assert response.backend == row.name


def check_tools_sent(row: Row, wire: Wire, called: Called) -> None:
    for body in wire.bodies():
        assert body["tools"] == [tool_sent(row, called.tool)]
        assert body["tool_choice"] == REQUIRED.get(row.name, "required")
        assert ("strict" in body["tools"][0]["function"]) is (row.name not in NO_STRICT)


@over(TOOLED)
def test_tools(wire: Wire) -> None:
    row = wire.row
    called = CALLED.get(row.name, OPENAI_CALLED)
    wire.answer(json_reply(called.whole))
    responses = both("What's the weather?", named_model(row), tools=[called.tool], tool_choice="required")
    check_called(row, called, responses, called.call_id)
    check_tools_sent(row, wire, called)
    wire.check_sent(2)


@over(TOOLED)
def test_stream_tools(wire: Wire) -> None:
    row = wire.row
    called = CALLED.get(row.name, OPENAI_CALLED)
    wire.answer(sse_reply(called.stream))
    streamed = stream_both(asked("What's the weather?"), named_model(row), tools=[called.tool], tool_choice="required")
    for chunks, _ in streamed:
        assert "".join(chunk.text for chunk in chunks) == ""  # a call's pieces are no text
    check_called(row, called, [response for _, response in streamed], called.stream_call_id)
    check_tools_sent(row, wire, called)
    assert all(body["stream_options"] == {"include_usage": True} for body in wire.bodies())
    wire.check_sent(2)


def test_the_xai_fixtures_have_an_empty_finish_reason() -> None:
    """What test_tools[xai] reads as tool_calls is really "" in the replies it is served."""
    whole = json.loads(fixture(CALLED["xai"].whole))
    assert whole["choices"][0]["finish_reason"] == "" and whole["choices"][0]["message"]["tool_calls"]
    events = [line[6:] for line in fixture(CALLED["xai"].stream).decode().splitlines() if line.startswith("data: {")]
    reasons = [choice.get("finish_reason") for event in events for choice in json.loads(event)["choices"]]
    assert "" in reasons and "tool_calls" not in reasons


# -- structured output ---------------------------------------------------------------------------


STRUCTURED = [row for row in PROVIDERS if "response_format" in row.capabilities]


def format_sent(row: Row) -> dict[str, Any]:
    """Capital's response_format as the provider takes it (fireworks: json_object with a schema)."""
    schema = Capital.model_json_schema()
    if row.name == "fireworks":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "Capital", "schema": schema, "strict": False}}


@over(STRUCTURED)
def test_structured(wire: Wire) -> None:
    row = wire.row
    wire.answer(json_reply(with_text('{"city": "Paris", "country": "France"}')))
    for response in both("Capital of France?", named_model(row), response_format=Capital):
        assert response.success, response.error
        assert response.parsed == Capital(city="Paris", country="France")
    assert [body["response_format"] for body in wire.bodies()] == [format_sent(row)] * 2
    wire.check_sent(2)


# -- images ------------------------------------------------------------------------------------


IMAGED = [row for row in PROVIDERS if "images" in row.capabilities]


@over(IMAGED)
def test_images(wire: Wire, tmp_path: Path) -> None:
    row = wire.row
    image = tmp_path / "dot.png"
    image.write_bytes(PNG)
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "path": str(image)},
        {"type": "image", "data": PNG, "media_type": "image/png"},
    ]
    wire.answer(json_reply(with_text("Two dots.")))
    messages: list[Any] = [{"role": "user", "content": content}]
    for response in both(messages, named_model(row)):
        assert response.success and response.content == "Two dots.", response.error
    data_url = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{ENCODED}"}}
    sent = [{"role": "user", "content": [{"type": "text", "text": "What is in these?"}, data_url, data_url]}]
    assert [body["messages"] for body in wire.bodies()] == [sent] * 2
    wire.check_sent(2)


# -- reasoning: never in the content -----------------------------------------------------------


#: The field a provider's reply carries its reasoning in, where the tests add it to OpenAI's
#: recorded reply (the others have fixtures of their own: deepseek, openrouter, xai, mistral).
#: groq: `reasoning` (groq-python's ChatCompletionMessage, with reasoning_format "parsed");
#: fireworks: `reasoning_content` (its API reference's response schema); vllm, lmstudio:
#: `reasoning_content`. Not confirmed in their docs (the test shows chatplug reads it if sent):
#: together and cerebras (`reasoning`), perplexity and azure (`reasoning_content`; perplexity's
#: reasoning models write theirs in the content, in <think> tags).
REASONING_FIELD = {
    "groq": "reasoning", "together": "reasoning", "fireworks": "reasoning_content", "cerebras": "reasoning",
    "perplexity": "reasoning_content", "vllm": "reasoning_content", "lmstudio": "reasoning_content",
    "azure": "reasoning_content",
}  # fmt: skip
THOUGHT = ["Short wavelengths scatter more;", " so the sky looks blue."]


@dataclass(frozen=True)
class Thought:
    """A reply with reasoning, whole and streamed, and what each one says."""

    whole: bytes
    stream: bytes
    reasoning: str
    text: str
    stream_reasoning: str
    stream_text: str
    tools: list[dict[str, Any]] = field(default_factory=list)


def said_in(body: bytes) -> tuple[str, str]:
    """The (reasoning, text) of a fixture's whole reply in OpenAI's shape."""
    message = json.loads(body)["choices"][0]["message"]
    return message.get("reasoning_content") or message.get("reasoning") or "", message.get("content") or ""


def streamed_in(body: bytes) -> tuple[str, str]:
    """The (reasoning, text) of a fixture's stream whose deltas are in OpenAI's shape."""
    reasoning, text = [], []
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                delta = choice.get("delta") or {}
                reasoning.append(delta.get("reasoning_content") or delta.get("reasoning") or "")
                text.append(delta.get("content") or "")
    return "".join(reasoning), "".join(text)


def recorded_thought(whole: str, stream: str, tools: list[dict[str, Any]] | None = None) -> Thought:
    body, events = fixture(whole), fixture(stream)
    return Thought(body, events, *said_in(body), *streamed_in(events), tools=tools or [])


def added_thought(name: str) -> Thought:
    """OpenAI's recorded reply and stream with reasoning added in the field ``name``."""
    body = json.loads(fixture("openai/chat_nonstream_200.json"))
    body["choices"][0]["message"][name] = "".join(THOUGHT)
    lines = fixture("openai/chat_stream_200.sse").decode().split("\n\n")
    first = json.loads(lines[0].removeprefix("data: "))
    thinking = []
    for piece in THOUGHT:
        first["choices"][0]["delta"] = {name: piece}
        thinking.append("data: " + json.dumps(first, separators=(",", ":")))
    stream = "\n\n".join([lines[0], *thinking, *lines[1:]]).encode()
    return Thought(
        json.dumps(body).encode(), stream, "".join(THOUGHT), OPENAI_SAID.text, "".join(THOUGHT), "Rayleigh scattering."
    )


def thought(row: Row) -> Thought:
    if row.name == "deepseek":  # reasoning_content (its API reference's example)
        return recorded_thought(
            "compatible/deepseek/chat_reasoning_200.json", "compatible/deepseek/chat_reasoning_stream_200.sse"
        )
    if row.name == "openrouter":  # reasoning (recorded, with a tool call)
        return recorded_thought(
            "compatible/openrouter/chat_reasoning_tool_200.json",
            "compatible/openrouter/chat_reasoning_tool_stream_200.sse",
            [FLORENCE_WEATHER],
        )
    if row.name == "xai":  # reasoning_content (recorded from grok-3-mini; the stream ends in a tool call)
        return recorded_thought(
            "compatible/xai/chat_reasoning_200.json",
            "compatible/xai/chat_reasoning_tool_stream_200.sse",
            [FLORENCE_WEATHER],
        )
    if row.name == "mistral":  # thinking chunks in the content (derived from its reasoning guide)
        return Thought(
            fixture("compatible/mistral/chat_reasoning_200.json"),
            fixture("compatible/mistral/chat_reasoning_stream_200.sse"),
            "Blue light has a shorter wavelength, so air scatters it more.",
            "Rayleigh scattering: air molecules scatter blue light more than red.",
            "Blue light has a shorter wavelength, so air scatters it more.",
            "Rayleigh scattering: air molecules scatter blue light more than red.",
        )  # fmt: skip
    return added_thought(REASONING_FIELD[row.name])


@over(PROVIDERS)
def test_reasoning(wire: Wire) -> None:
    row = wire.row
    expected = thought(row)
    assert expected.reasoning and expected.stream_reasoning  # the replies carry some
    wire.answer(json_reply(expected.whole))
    tools = {"tools": expected.tools} if expected.tools else {}
    for response in both(PROMPT, named_model(row), **tools):
        assert response.success, response.error
        assert (response.reasoning, response.content) == (expected.reasoning, expected.text)
        assert expected.reasoning not in response.content
    wire.answer(sse_reply(expected.stream))
    for chunks, response in stream_both(asked(), named_model(row), **tools):
        assert response.success, response.error
        assert "".join(chunk.reasoning for chunk in chunks) == response.reasoning == expected.stream_reasoning
        assert "".join(chunk.text for chunk in chunks) == response.content == expected.stream_text
        assert expected.stream_reasoning not in response.content
    wire.check_sent(4)


def test_xai_reasoning_tokens_count_in_the_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    """xAI counts reasoning tokens apart from completion_tokens (its recorded usage: total =
    prompt + completion + reasoning); they are counted in the completion's, as OpenAI's are."""
    with served(BY_NAME["xai"], monkeypatch) as xai:
        thought_of_xai = thought(xai.row)
        xai.answer(json_reply(thought_of_xai.whole))
        for response in both(PROMPT):
            assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (331, 11 + 332, 674)
        xai.answer(sse_reply(thought_of_xai.stream))
        for _, response in stream_both(asked(), tools=[FLORENCE_WEATHER]):
            assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (288, 27 + 313, 628)


# -- errors ------------------------------------------------------------------------------------


@over(PROVIDERS)
def test_errors(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """401, 404 and 429 are auth (naming the key variable), not_found (naming the URL variable)
    and rate_limit; the key the server echoes is masked; a missing key is auth before anything
    is sent, but for a local server, which gets a placeholder (and the key when one is set)."""
    row = wire.row
    echoed = json.loads(fixture("openai/error_auth_401.json"))
    echoed["error"]["message"] = f"Incorrect API key provided: {wire.key}. You can find your API key in the console."
    cases = [
        (
            401,
            json.dumps(echoed).encode(),
            ErrorKind.AUTH,
            ("Incorrect API key provided: ***", f"Check {row.key_variable}"),
        ),
        (404, fixture("openai/error_model_not_found_404.json"), ErrorKind.NOT_FOUND, (row.url_variable,)),
        (429, fixture("openai/error_rate_limit_429.json"), ErrorKind.RATE_LIMIT, ("Rate limit reached",)),
    ]
    for status, body, kind, words in cases:
        wire.server.requests.clear()
        wire.answer(json_reply(body, status))
        for response in both("Hi", named_model(row)):
            assert response.error_kind is kind, response.error
            assert response.error is not None and response.error.startswith(f"{row.name}: ")
            assert f"HTTP {status}" in response.error and f"(request id {REQUEST_ID})" in response.error
            for word in words:
                assert word in response.error
            shown = (str(response), repr(response), json.dumps(response.to_dict()), repr(response.exception))
            assert not any(wire.key in text for text in shown)
        wire.check_sent(2)  # the key was sent

    wire.server.requests.clear()
    wire.answer(json_reply("openai/chat_nonstream_200.json"))
    monkeypatch.delenv(row.key_variable)
    responses = both("Hi", named_model(row))
    if row.key_required:
        for response in responses:
            assert response.error_kind is ErrorKind.AUTH, response.error
            assert f"{row.key_variable} is not set" in str(response.error)
        assert wire.server.requests == []
    else:
        assert all(response.success for response in responses)
        wire.check_sent(2, PLACEHOLDER)
        wire.server.requests.clear()
        monkeypatch.setenv(row.key_variable, "local-key-1")
        assert generate_completion_sync("Hi", named_model(row), backend=row.name).success
        wire.check_sent(1, "Bearer local-key-1")


def test_azure_without_its_endpoint_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-1")
    for response in both("Hi", backend="azure"):
        assert response.error_kind is ErrorKind.CONFIG, response.error
        assert "AZURE_OPENAI_ENDPOINT is not set" in str(response.error)


# -- refused before sending -------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A call a provider refuses before sending: ``feature`` names it in the test id."""

    provider: str
    feature: str
    call: Callable[[Row], list[LLMResponse]]
    words: tuple[str, ...]

    def __str__(self) -> str:  # the test id, as tests/conformance.py reads it
        return f"{self.provider}-{self.feature}"


def whole(model: str | None = None, **options: Any) -> Callable[[Row], list[LLMResponse]]:
    return lambda row: both(PROMPT, model or named_model(row), **options)


def streamed(**options: Any) -> Callable[[Row], list[LLMResponse]]:
    return lambda row: [response for _, response in stream_both(asked(), named_model(row), **options)]


def with_image(row: Row) -> list[LLMResponse]:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "data": PNG, "media_type": "image/png"},
    ]
    messages: list[Any] = [{"role": "user", "content": content}]
    return both(messages, named_model(row))


OPTION_VALUES: dict[str, Any] = {
    "frequency_penalty": 0.5, "presence_penalty": 0.5, "logit_bias": {"50256": -100}, "parallel_tool_calls": False,
    "logprobs": True, "top_logprobs": 2, "stop": ["\n\n"],
}  # fmt: skip
#: xai's reasoning models, by the model-name prefix its row refuses options on, and a model of each.
XAI_REASONING = {"grok-3-mini": "grok-3-mini", "grok-4": "grok-4", "grok-code-fast": "grok-code-fast-1"}
REFUSALS = [
    Refusal("perplexity", "tools", whole(tools=[WEATHER]), ("cannot call tools",)),
    Refusal("perplexity", "stream_tools", streamed(tools=[WEATHER]), ("cannot call tools",)),
    Refusal("deepseek", "images", with_image, ("cannot take images",)),
    Refusal("deepseek", "structured", whole(response_format=Capital), ("cannot give structured output",)),
    Refusal("groq", "stream_structured", streamed(response_format=Capital), ("no structured output", "streamed call")),
    *[
        Refusal(provider, option, whole(**{option: OPTION_VALUES[option]}), (f"refuses the option {option!r}",))
        for provider, options in [
            ("cerebras", ("frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls")),
            ("groq", ("logprobs", "logit_bias", "top_logprobs")),
        ]
        for option in options
    ],
    *[
        Refusal("xai", f"{prefix}-{option}", whole(model, **{option: OPTION_VALUES[option]}),
                (f"model {model!r} refuses the option {option!r}",))
        for prefix, model in XAI_REASONING.items()
        for option in ("stop", "frequency_penalty", "presence_penalty")
    ],
]  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS, ids=str)
def test_refused_before_sending(case: Refusal, monkeypatch: pytest.MonkeyPatch) -> None:
    with served(BY_NAME[case.provider], monkeypatch) as refusing:
        for response in case.call(refusing.row):
            assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
            assert "nothing was sent" in str(response.error)
            for word in case.words:
                assert word in str(response.error)
        assert refusing.server.requests == []


def test_every_refusal_in_the_rows_is_tested() -> None:
    """The refusals above are all the rows make, no more and no fewer."""
    made = set()
    features = {"tools": ("tools", "stream_tools"), "images": ("images",), "response_format": ("structured",)}
    for row in PROVIDERS:
        for capability, names in features.items():
            if capability not in row.capabilities:
                made |= {(row.name, name) for name in names}
        if not row.streams_response_format:
            made.add((row.name, "stream_structured"))
        made |= {(row.name, option) for option in row.refused_options}
        made |= {(row.name, f"{prefix}-{o}") for prefix, options in row.refused_by_model.items() for o in options}
    assert made == {(case.provider, case.feature) for case in REFUSALS}


def test_xai_takes_stop_and_penalties_on_a_model_that_is_no_reasoning_one(monkeypatch: pytest.MonkeyPatch) -> None:
    with served(BY_NAME["xai"], monkeypatch) as xai:
        for model in ("grok-2", "grok-3"):
            assert all(r.success for r in both(PROMPT, model, stop=["\n\n"], frequency_penalty=0.5))
        for body in xai.bodies():
            assert (body["stop"], body["frequency_penalty"]) == (["\n\n"], 0.5)
        assert [body["model"] for body in xai.bodies()] == ["grok-2", "grok-2", "grok-3", "grok-3"]


def test_groq_takes_structured_output_on_a_whole_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """What groq refuses is the stream: the same call, whole, is sent (test_structured[groq] too)."""
    with served(BY_NAME["groq"], monkeypatch) as groq:
        groq.answer(json_reply(with_text('{"city": "Paris", "country": "France"}')))
        assert generate_completion_sync("Capital of France?", response_format=Capital).parsed == Capital(
            city="Paris", country="France"
        )
        groq.check_sent(1)


# -- each provider's other quirks ---------------------------------------------------------------


def test_mistral_seed_is_random_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    with served(BY_NAME["mistral"], monkeypatch) as mistral:
        assert all(response.success for response in both(PROMPT, seed=7))
        for body in mistral.bodies():
            assert body["random_seed"] == 7 and "seed" not in body
        mistral.check_sent(2)


def test_openrouter_attribution_headers_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each header is sent when its variable is set, at that call (the client is reused)."""
    with served(BY_NAME["openrouter"], monkeypatch) as openrouter:
        assert generate_completion_sync(PROMPT, backend="openrouter").success
        monkeypatch.setenv("OPENROUTER_APP_URL", "https://myapp.example.com")
        monkeypatch.setenv("OPENROUTER_APP_TITLE", "My App")
        assert generate_completion_sync(PROMPT, backend="openrouter").success
        monkeypatch.delenv("OPENROUTER_APP_TITLE")
        assert generate_completion_sync(PROMPT, backend="openrouter").success
        without, both_set, url_only = (headers_of(request) for request in openrouter.check_sent(3))
        assert not {"http-referer", "x-title"} & set(without)
        assert (both_set["http-referer"], both_set["x-title"]) == ("https://myapp.example.com", "My App")
        assert url_only["http-referer"] == "https://myapp.example.com" and "x-title" not in url_only


@over(PROVIDERS)
def test_openai_variables_never_reach_it(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_ORG_ID and OPENAI_PROJECT_ID (the last two read by
    the openai SDK itself) reach no compatible provider."""
    row = wire.row
    elsewhere = FakeServer()  # where OPENAI_BASE_URL points
    elsewhere.route("POST", "/v1/chat/completions", json_reply("openai/chat_nonstream_200.json"))
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-SECRET-1")
        monkeypatch.setenv("OPENAI_BASE_URL", f"{elsewhere.url}/v1")
        monkeypatch.setenv("OPENAI_ORG_ID", "org-chatplug-test")
        monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_chatplug_test")
        assert all(response.success for response in both(PROMPT, named_model(row), backend=row.name))
        monkeypatch.delenv(row.key_variable)  # with no key of its own, OPENAI_API_KEY is not taken either
        missing = generate_completion_sync(PROMPT, named_model(row), backend=row.name)
        if row.key_required:
            assert missing.error_kind is ErrorKind.AUTH
            assert str(missing.error).startswith(f"{row.name}: {row.key_variable} is not set")
            requests = wire.check_sent(2)
        else:
            assert missing.success
            requests = wire.server.requests
            assert [headers_of(r)["authorization"] for r in requests] == [f"Bearer {wire.key}"] * 2 + [PLACEHOLDER]
        for request in requests:
            headers = headers_of(request)
            assert not {"openai-organization", "openai-project"} & set(headers)
            assert "sk-openai" not in json.dumps(headers)
        assert elsewhere.requests == []
    finally:
        elsewhere.close()


def test_the_providers_variables_never_reach_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every provider's key and base URL variables set: the openai backend takes none of them."""
    openai, elsewhere = FakeServer(), FakeServer()
    for server in (openai, elsewhere):
        server.route("POST", "/v1/chat/completions", json_reply("openai/chat_nonstream_200.json"))
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{openai.url}/v1")
        for row in PROVIDERS:
            monkeypatch.setenv(row.key_variable, key_of(row))
            monkeypatch.setenv(row.url_variable, f"{elsewhere.url}/v1")
        assert all(response.success for response in both(PROMPT, backend="openai"))
        assert [headers_of(r)["authorization"] for r in openai.requests] == [PLACEHOLDER] * 2
        assert elsewhere.requests == []
    finally:
        chatplug.close()
        openai.close()
        elsewhere.close()


def test_chatplug_backends_lists_all_twelve() -> None:
    names = {"groq", "openrouter", "deepseek", "mistral", "together", "fireworks", "xai", "cerebras", "perplexity",
             "vllm", "lmstudio", "azure"}  # fmt: skip
    assert {row.name for row in PROVIDERS} == names
    assert names <= set(chatplug.backend_names())


DEEPSEEK = next(row for row in PROVIDERS if row.name == "deepseek")


@over([DEEPSEEK])
def test_deepseeks_reasoning_goes_back_on_the_next_turn(wire: Wire) -> None:
    """Thinking mode with tools: the assistant turn's reasoning_content goes back with it
    (api-docs.deepseek.com/guides/thinking_mode), kept in response.message as a block."""
    expected = thought(DEEPSEEK)
    wire.answer(json_reply(expected.whole), sse_reply(expected.stream), json_reply(expected.whole))
    whole = chatplug.generate_completion_with_messages_sync(asked())
    with chatplug.stream_completion_with_messages_sync(asked()) as stream:
        list(stream)
    for response in (whole, stream.response):
        assert response.success, response.error
        assert response.message["thinking_blocks"] == [
            {"type": "reasoning_content", "reasoning_content": response.reasoning}
        ]
    history = [*asked(), whole.message, {"role": "user", "content": "And at sunset?"}]
    assert chatplug.generate_completion_with_messages_sync(history).success
    sent = wire.bodies()[2]["messages"]
    assert sent[1] == {"role": "assistant", "content": whole.content, "reasoning_content": expected.reasoning}
    assert "reasoning_content" not in sent[0] and "reasoning_content" not in sent[2]


def test_other_providers_leave_deepseeks_reasoning_out(anthropic_server: FakeServer, openai_server: FakeServer) -> None:
    block = {"type": "reasoning_content", "reasoning_content": "Because of scattering."}
    history = [*asked(), {"role": "assistant", "content": "Scattering.", "thinking_blocks": [block]}, *asked("More?")]
    for backend, server in (("anthropic", anthropic_server), ("openai", openai_server)):
        response = chatplug.generate_completion_with_messages_sync(history, backend=backend)
        assert response.success, response.error
        assert "Because of scattering." not in server.requests[-1].body.decode()


PERPLEXITY = next(row for row in PROVIDERS if row.name == "perplexity")
CITED = ["https://en.wikipedia.org/wiki/Rayleigh_scattering", "https://science.nasa.gov/sun/facts/"]


def cited_stream() -> bytes:
    """OpenAI's recorded stream with Perplexity's ``citations`` on each chunk, as its stream sends
    them (derived: its API reference's streaming example carries them beside ``choices``)."""
    events = fixture("openai/chat_stream_200.sse").decode().split("\n\n")
    cited = []
    for event in events:
        if event.startswith("data: {"):
            body = json.loads(event[len("data: ") :])
            body["citations"] = CITED
            event = "data: " + json.dumps(body, separators=(",", ":"))
        cited.append(event)
    return "\n\n".join(cited).encode()


@over([PERPLEXITY])
def test_perplexitys_citations_are_kept(wire: Wire, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CACHE", str(tmp_path / "cache.db"))
    wire.answer(json_reply(fixture("compatible/perplexity/chat_nonstream_200.json")), sse_reply(cited_stream()))
    whole = chatplug.generate_completion_with_messages_sync(asked())
    with chatplug.stream_completion_with_messages_sync(asked("Why is it red at sunset?")) as stream:
        list(stream)
    replayed = chatplug.generate_completion_with_messages_sync(asked())
    for response in (whole, stream.response, replayed):
        assert response.success, response.error
        assert response.citations == CITED and response.to_dict()["citations"] == CITED
    assert replayed.cached and len(wire.server.requests) == 2
