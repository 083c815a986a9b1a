"""What chatplug sends through the openai and anthropic SDKs' ``client.post()`` is what their
``create()`` sends for the same request; and what it sends through the google-genai SDK is what
that SDK's ``generate_content()`` sends for the same request written as its users write it.

The two backends build the body themselves and post it with the SDK's client (see
``chatplug/backends/_stainless.py``) instead of calling ``chat.completions.create()`` /
``messages.create()``. An SDK release that changes what ``create()`` sends (a header it adds, a
body field it renames or fills in, a request option it sets) would leave chatplug sending the old
request, unnoticed: here every request is sent once through the raw SDK's ``create()`` and once
through chatplug, to the same loopback server (answering in the provider's recorded wire format),
and the two requests it received are compared whole: method, path and query, every header (but
the few listed in ``PER_CALL_TIMEOUT``, whose values are the call's own) and the body as JSON.
Each case runs sync (``OpenAI`` / ``Anthropic`` and chatplug's ``*_sync``) and async
(``AsyncOpenAI`` / ``AsyncAnthropic`` and chatplug's ``*_async``).

The gemini backend calls the SDK's ``generate_content()`` itself, with arguments it makes of
chatplug's request (``GeminiBackend.arguments``): there the comparison is with the raw SDK called
as its documentation shows (a string or parts as ``contents``, a ``config``), sync and through
``client.aio``, whole and streamed; the only header that differs is listed in
``GEMINI_ASYNC_HEADERS``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel

import chatplug
from chatplug import (
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    settings,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .fakeserver import FakeServer, Recorded, Reply, fixture
from .providers import ANTHROPIC, OPENAI, REQUEST_ID, WEATHER, Provider, headers_of, provider_server, text_reply

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-20250514"  # neither deprecated nor warned of by the installed SDK
SYSTEM = "You are a terse assistant."
QUESTION = "Why is the sky blue?"
WEATHER_QUESTION = "What's the weather in Tokyo?"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
ENCODED = base64.b64encode(PNG).decode()
CAT = "https://example.com/cat.jpg"
SSE = "text/event-stream; charset=utf-8"

#: The headers whose value is the call's own timeout: sync whole calls only, where chatplug passes
#: the time left before the call's deadline as the per-request timeout (``StainlessBackend.complete``),
#: measured as the call starts, so it is a little below the client's timeout and differs on every
#: call; the raw ``create()`` is given the client's timeout as its ``timeout=``, the same option.
#: Both SDKs send ``x-stainless-read-timeout``; anthropic also ``x-stainless-timeout``. Their
#: values are still checked (``check_timeout_headers``), only not for equality.
PER_CALL_TIMEOUT = frozenset({"x-stainless-read-timeout", "x-stainless-timeout"})


class Capital(BaseModel):
    """The capital of a country."""

    city: str
    country: str


CAPITAL_JSON = '{"city": "Paris", "country": "France"}'


def recorded_request(name: str) -> dict[str, Any]:
    """A recorded request body (tests/fixtures/<backend>/...)."""
    return json.loads(fixture(name))  # type: ignore[no-any-return]


def stream_reply(provider: Provider, name: str) -> Reply:
    """A recorded SSE stream, sent chunked with the headers the real service sends."""
    headers = {"Content-Type": SSE, provider.request_id_header: REQUEST_ID}
    return Reply(200, fixture(f"{provider.backend}/{name}"), headers, chunked=True)


# -- the cases: the same request as chatplug's call and as the SDK's create() -------------------


@dataclass(frozen=True)
class Case:
    """One request: chatplug's call (``payload``, a prompt or messages, and ``options``) and the
    keyword arguments of the SDK's ``create()`` that ask for the same; the reply the server gives."""

    id: str
    provider: Provider
    reply: Reply
    payload: str | list[dict[str, Any]]
    options: dict[str, Any]  # chatplug's model_name, temperature, max_tokens and options
    create: dict[str, Any]  # create()'s keyword arguments
    stream: bool = False
    #: Where chatplug's body legitimately differs from create()'s: (JSON path, create()'s value,
    #: chatplug's value), exactly. Empty for every case today.
    body_differences: tuple[tuple[str, Any, Any], ...] = field(default=())

    def __str__(self) -> str:
        return self.id

    @property
    def backend(self) -> str:
        return self.provider.backend

    @property
    def chatplug_options(self) -> dict[str, Any]:
        return self.options


OPENAI_CASES = [
    Case(
        "openai-plain", OPENAI, OPENAI.reply(OPENAI.success),
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        {"model_name": OPENAI_MODEL, "temperature": 0.2, "max_tokens": 128},
        # max_tokens: a custom OPENAI_BASE_URL gets the name every compatible server knows
        {"model": OPENAI_MODEL, "temperature": 0.2, "max_tokens": 128,
         "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]},
    ),
    Case(
        "openai-stream", OPENAI, stream_reply(OPENAI, "chat_stream_200.sse"),
        QUESTION,
        {"model_name": OPENAI_MODEL, "temperature": 0.2, "max_tokens": 128},
        # chatplug asks for the usage chunk (stream_options), as the recorded stream request does
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0.2,
         "max_tokens": 128, "stream": True, "stream_options": {"include_usage": True}},
        stream=True,
    ),
    Case(
        "openai-tools", OPENAI, OPENAI.reply("chat_tool_nonstream_200.json"),
        WEATHER_QUESTION,
        {"model_name": OPENAI_MODEL, "temperature": 0.0, "max_tokens": 1024, "tools": [WEATHER],
         "tool_choice": "get_weather"},
        # the tool as OpenAI's recording has it (a function tool, "strict": false)
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": WEATHER_QUESTION}], "temperature": 0.0,
         "max_tokens": 1024, "tools": recorded_request("openai/chat_tools_request.json")["tools"],
         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    Case(
        "openai-structured", OPENAI, text_reply(OPENAI, CAPITAL_JSON),
        [{"role": "user", "content": "Capital of France?"}],
        {"model_name": OPENAI_MODEL, "temperature": 0.0, "max_tokens": 64, "response_format": Capital},
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "Capital of France?"}], "temperature": 0.0,
         "max_tokens": 64, "response_format": {"type": "json_schema", "json_schema": {
             "name": "Capital", "schema": Capital.model_json_schema(), "strict": False}}},
    ),
    Case(
        "openai-image", OPENAI, text_reply(OPENAI, "A dot and a cat."),
        [{"role": "user", "content": [{"type": "text", "text": "What is in these?"},
                                      {"type": "image", "data": PNG, "media_type": "image/png"},
                                      {"type": "image", "url": CAT}]}],
        {"model_name": OPENAI_MODEL, "temperature": 0.5, "max_tokens": 64},
        {"model": OPENAI_MODEL, "temperature": 0.5, "max_tokens": 64, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{ENCODED}"}},
                {"type": "image_url", "image_url": {"url": CAT}}]}]},
    ),
    Case(
        # create()'s request options and options passed through: chatplug's wire() makes the
        # request options of them as create() does
        "openai-request-options", OPENAI, OPENAI.reply(OPENAI.success),
        [{"role": "user", "content": QUESTION}],
        {"model_name": OPENAI_MODEL, "temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "seed": 7,
         "extra_headers": {"X-Trace": "t-1"}, "extra_query": {"trace": "q-1"}, "extra_body": {"cache_prompt": True}},
        {"model": OPENAI_MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0.2,
         "max_tokens": 64, "stop": ["\n\n"], "seed": 7, "extra_headers": {"X-Trace": "t-1"},
         "extra_query": {"trace": "q-1"}, "extra_body": {"cache_prompt": True}},
    ),
]  # fmt: skip

ANTHROPIC_CASES = [
    Case(
        # The temperature given to chatplug is not sent: the installed SDK's messages.create() has
        # no temperature parameter (chatplug leaves it out with a debug log), so create() is given
        # none either.
        "anthropic-plain", ANTHROPIC, ANTHROPIC.reply(ANTHROPIC.success),
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        {"model_name": ANTHROPIC_MODEL, "temperature": 0.2, "max_tokens": 1024},
        {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "system": SYSTEM,
         "messages": [{"role": "user", "content": QUESTION}]},
    ),
    Case(
        "anthropic-stream", ANTHROPIC, stream_reply(ANTHROPIC, "messages_stream_200.sse"),
        QUESTION,
        {"model_name": ANTHROPIC_MODEL, "max_tokens": 1024},
        {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": QUESTION}],
         "stream": True},
        stream=True,
    ),
    Case(
        "anthropic-tools", ANTHROPIC, ANTHROPIC.reply("messages_tool_nonstream_200.json"),
        WEATHER_QUESTION,
        {"model_name": ANTHROPIC_MODEL, "max_tokens": 1024, "tools": [WEATHER], "tool_choice": "get_weather"},
        # the tool as Anthropic's recording has it
        {"model": ANTHROPIC_MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": WEATHER_QUESTION}],
         "tools": recorded_request("anthropic/messages_tools_request.json")["tools"],
         "tool_choice": {"type": "tool", "name": "get_weather"}},
    ),
    Case(
        # response_format becomes output_config.format, the schema made to fit Anthropic's subset
        # by the SDK's public transform_schema (what its docs give create() for a pydantic model)
        "anthropic-structured", ANTHROPIC, text_reply(ANTHROPIC, CAPITAL_JSON),
        [{"role": "user", "content": "Capital of France?"}],
        {"model_name": ANTHROPIC_MODEL, "max_tokens": 64, "response_format": Capital},
        {"model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Capital of France?"}],
         "output_config": {"format": {"type": "json_schema", "schema": anthropic.transform_schema(Capital)}}},
    ),
    Case(
        "anthropic-image", ANTHROPIC, text_reply(ANTHROPIC, "A dot and a cat."),
        [{"role": "user", "content": [{"type": "text", "text": "What is in these?"},
                                      {"type": "image", "data": PNG, "media_type": "image/png"},
                                      {"type": "image", "url": CAT}]}],
        {"model_name": ANTHROPIC_MODEL, "max_tokens": 64},
        {"model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ENCODED}},
                {"type": "image", "source": {"type": "url", "url": CAT}}]}]},
    ),
    Case(
        # create()'s request options, and the parameters it sends as headers (workspace_id,
        # user_profile_id), which chatplug's wire() turns into headers as create() does
        "anthropic-request-options", ANTHROPIC, ANTHROPIC.reply(ANTHROPIC.success),
        [{"role": "user", "content": QUESTION}],
        {"model_name": ANTHROPIC_MODEL, "max_tokens": 64, "stop": ["\n\nHuman:"], "workspace_id": "ws-1",
         "user_profile_id": "up-1", "extra_headers": {"X-Trace": "t-1"}, "extra_query": {"trace": "q-1"},
         "extra_body": {"cache_prompt": True}},
        {"model": ANTHROPIC_MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": QUESTION}],
         "stop_sequences": ["\n\nHuman:"], "workspace_id": "ws-1", "user_profile_id": "up-1",
         "extra_headers": {"X-Trace": "t-1"}, "extra_query": {"trace": "q-1"}, "extra_body": {"cache_prompt": True}},
    ),
]  # fmt: skip


# -- sending a case both ways -------------------------------------------------------------------


def sync_create(provider: Provider) -> tuple[type[Any], Callable[[Any], Callable[..., Any]]]:
    """The SDK's sync client class and its create() on a client."""
    if provider is OPENAI:
        return openai.OpenAI, lambda client: client.chat.completions.create
    return anthropic.Anthropic, lambda client: client.messages.create


def async_create(provider: Provider) -> tuple[type[Any], Callable[[Any], Callable[..., Any]]]:
    if provider is OPENAI:
        return openai.AsyncOpenAI, lambda client: client.chat.completions.create
    return anthropic.AsyncAnthropic, lambda client: client.messages.create


def chatplug_sync(case: Case | GeminiCase) -> LLMResponse:
    """chatplug's call for ``case``: a prompt or messages, whole or streamed (drained: a stream
    yields its text, or has only tool calls, which yield no chunk)."""
    backend, options = case.backend, case.chatplug_options
    if case.stream:
        stream = stream_completion_sync if isinstance(case.payload, str) else stream_completion_with_messages_sync
        with stream(case.payload, backend=backend, **options) as streamed:  # type: ignore[arg-type]
            assert list(streamed) or streamed.response.tool_calls
        return streamed.response
    call = generate_completion_sync if isinstance(case.payload, str) else generate_completion_with_messages_sync
    return call(case.payload, backend=backend, **options)  # type: ignore[arg-type]


async def chatplug_async(case: Case | GeminiCase) -> LLMResponse:
    backend, options = case.backend, case.chatplug_options
    if case.stream:
        stream = stream_completion_async if isinstance(case.payload, str) else stream_completion_with_messages_async
        async with stream(case.payload, backend=backend, **options) as streamed:  # type: ignore[arg-type]
            assert [chunk async for chunk in streamed] or streamed.response.tool_calls
        return streamed.response
    call = generate_completion_async if isinstance(case.payload, str) else generate_completion_with_messages_async
    return await call(case.payload, backend=backend, **options)  # type: ignore[arg-type]


def create_sync(case: Case) -> None:
    """The SDK's create() for ``case``, on a client made as chatplug makes its own (the base URL
    and key from the environment, chatplug's timeout, no retries of the SDK's)."""
    client_class, create_of = sync_create(case.provider)
    with client_class(timeout=settings.timeout, max_retries=0) as client:
        create = create_of(client)
        if case.stream:
            with create(**case.create) as events:
                assert list(events)
        else:
            # chatplug's sync whole call passes a per-request timeout (PER_CALL_TIMEOUT): so does this
            assert create(**case.create, timeout=settings.timeout).id


async def create_async(case: Case) -> None:
    client_class, create_of = async_create(case.provider)
    async with client_class(timeout=settings.timeout, max_retries=0) as client:
        create = create_of(client)
        if case.stream:
            async with await create(**case.create) as events:
                assert [event async for event in events]
        else:
            assert (await create(**case.create)).id


def sent_both_ways(case: Case, mode: str, server: FakeServer) -> tuple[Recorded, Recorded]:
    """The requests the server got from chatplug's call and from create(), in that order."""
    if mode == "sync":
        response = chatplug_sync(case)
        create_sync(case)
    else:

        async def both() -> LLMResponse:
            response = await chatplug_async(case)
            await create_async(case)
            return response

        response = asyncio.run(both())
    assert response.success, response.error
    assert len(server.requests) == 2, [request.path for request in server.requests]
    ours, theirs = server.requests
    return ours, theirs


# -- comparing what the server received ---------------------------------------------------------


class Absent(enum.Enum):
    """A key one of two JSON documents does not have."""

    ABSENT = "absent"


ABSENT = Absent.ABSENT


def json_differences(theirs: Any, ours: Any, path: str = "$") -> list[tuple[str, Any, Any]]:
    """Where two JSON documents differ: (path, ``theirs``'s value, ``ours``'s), ``ABSENT`` for a
    missing key. Exact: ``0`` is not ``0.0`` nor ``false``, as on the wire. Key order is not
    compared (it means nothing in JSON, and the SDKs' create() and chatplug order keys differently)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [
            difference
            for key in sorted(theirs.keys() | ours.keys())
            for difference in json_differences(theirs.get(key, ABSENT), ours.get(key, ABSENT), f"{path}.{key}")
        ]
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        return [
            difference
            for i, (mine, other) in enumerate(zip(theirs, ours, strict=True))
            for difference in json_differences(mine, other, f"{path}[{i}]")
        ]
    if type(theirs) is type(ours) and theirs == ours:
        return []
    return [(path, theirs, ours)]


def header_differences(theirs: dict[str, str], ours: dict[str, str], skipped: frozenset[str]) -> dict[str, Any]:
    """The headers (names in lower case) that differ, but for ``skipped``: name -> (theirs, ours)."""
    names = (theirs.keys() | ours.keys()) - skipped
    return {
        name: (theirs.get(name, ABSENT), ours.get(name, ABSENT))
        for name in sorted(names)
        if theirs.get(name, ABSENT) != ours.get(name, ABSENT)
    }


def check_timeout_headers(theirs: dict[str, str], ours: dict[str, str]) -> None:
    """The per-request timeout headers of a sync whole call: sent by both or by neither; create()'s
    is the timeout it was given; chatplug's the time left before its deadline (at most the same)."""
    timeout = float(settings.timeout)
    for name in sorted(PER_CALL_TIMEOUT):
        assert (name in theirs) == (name in ours), name
        if name in theirs:
            assert theirs[name] == str(timeout), (name, theirs[name])
            assert 0 < float(ours[name]) <= timeout, (name, ours[name])
    assert "x-stainless-read-timeout" in theirs  # both SDKs send it: the exception is not vacuous
    if "x-stainless-timeout" in ours:
        assert ours["x-stainless-timeout"] == ours["x-stainless-read-timeout"]


def assert_same_request(case: Case, mode: str, ours: Recorded, theirs: Recorded) -> None:
    assert (ours.method, ours.path) == (theirs.method, theirs.path)
    assert json_differences(theirs.json(), ours.json()) == list(case.body_differences)
    theirs_headers, ours_headers = headers_of(theirs), headers_of(ours)
    sdk = openai if case.provider is OPENAI else anthropic
    assert theirs_headers["x-stainless-package-version"] == sdk.__version__  # the SDK's own headers were sent
    per_call = PER_CALL_TIMEOUT if mode == "sync" and not case.stream else frozenset()
    # content-length is compared too: the bodies are the same JSON, serialised by the same SDK code
    assert header_differences(theirs_headers, ours_headers, per_call) == {}
    if per_call:
        check_timeout_headers(theirs_headers, ours_headers)


# -- the tests ----------------------------------------------------------------------------------


@pytest.fixture
def parity_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The case's provider's fake server (its base URL variable pointing at it), answering with the
    case's reply; a key set, which the raw SDK needs and chatplug sends as it is."""
    case: Case = request.node.callspec.params["case"]
    monkeypatch.setenv(case.provider.key_env, f"sk-parity-{case.provider.backend}-key")
    for server in provider_server(monkeypatch, case.provider):
        case.provider.route(server, case.reply)
        yield server


MODES = ["sync", "async"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", OPENAI_CASES, ids=str)
def test_openai_create_and_chatplug_send_the_same_request(case: Case, mode: str, parity_server: FakeServer) -> None:
    ours, theirs = sent_both_ways(case, mode, parity_server)
    assert_same_request(case, mode, ours, theirs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ANTHROPIC_CASES, ids=str)
def test_anthropic_create_and_chatplug_send_the_same_request(case: Case, mode: str, parity_server: FakeServer) -> None:
    ours, theirs = sent_both_ways(case, mode, parity_server)
    assert_same_request(case, mode, ours, theirs)


# -- gemini: the google-genai SDK's generate_content() -------------------------------------------
#
# The gemini backend calls the SDK's own ``models.generate_content()`` and
# ``generate_content_stream()`` (and their ``client.aio`` twins) with the arguments it makes of
# chatplug's request: each request is sent once through the raw SDK, written as a user of the SDK
# writes it, and once through chatplug, and the two requests compared whole as above. The raw
# client is made as chatplug makes its own: the key, the base URL, ``api_version="v1beta"`` and
# chatplug's timeout (which the SDK sends as ``X-Server-Timeout``, the same on both). Each case
# also checks what chatplug made of the recorded reply.

GEMINI_MODEL = "gemini-2.5-flash"
GEMINI3_MODEL = "gemini-3-flash-preview"
GEMINI_KEY = "gemini-parity-key"
GREETING = "Say hi in Portuguese"  # the recorded request's (tests/fixtures/gemini/generate_request.json)
HELPFUL = "You are a helpful assistant"
#: The tool of the recorded tool requests (tool_request.json), as a caller passes it: a dict schema.
FORECAST = {
    "name": "weather",
    "description": "Get weather information for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "the city"}},
        "required": ["location"],
    },
}
FORECAST_QUESTION = "What's the weather in Florence, Italy?"
FORECAST_DECLARATIONS = [
    {"function_declarations": [{"name": "weather", "description": FORECAST["description"],
                                "parameters_json_schema": FORECAST["parameters"]}]}
]  # fmt: skip
FORECAST_CALL = [("weather", {"location": "Florence, Italy"})]
#: The answers of the recorded replies: generate_200.json, stream_200.sse, thinking_result_200.json.
OI = (
    '**Oi** (pronounced like "oy") is the most common way to say hi in Portuguese! \n\nYou can also use **Olá**, '
    'which means "Hello".'
)
STREAMED_OI = (
    '"Hi" in Portuguese is **"Oi"** (pronounced like "oy"). \n\nYou can also use **"Olá"** (pronounced oh-LAH), '
    'which means "Hello".'
)
HOT = "The current weather in Florence, Italy is 40°C (104°F). Stay hydrated, it's quite hot!"
RECORDED_MODEL = "gemini-3.1-pro-preview"  # the replies' modelVersion


class Person(BaseModel):
    """The person of the recorded structured-output request (json_schema_request.json)."""

    name: str
    age: int
    city: str


def gemini_reply(body: str | bytes) -> Reply:
    """A recorded reply (a fixture in tests/fixtures/gemini, or a body) as Gemini sends it: JSON,
    or for a ``.sse`` fixture an event stream, chunked."""
    if isinstance(body, str) and body.endswith(".sse"):
        return Reply(200, fixture(f"gemini/{body}"), {"Content-Type": "text/event-stream"}, chunked=True)
    data = fixture(f"gemini/{body}") if isinstance(body, str) else body
    return Reply(200, data, {"Content-Type": "application/json; charset=UTF-8"})


def gemini_text(text: str) -> bytes:
    """generate_200.json with ``text`` as the model's answer."""
    body = json.loads(fixture("gemini/generate_200.json"))
    body["candidates"][0]["content"]["parts"][0]["text"] = text
    return json.dumps(body).encode()


@dataclass(frozen=True)
class GeminiCase:
    """One request: chatplug's call (``payload``, a prompt or messages, and ``options``) and the raw
    SDK's arguments that ask for the same (``model``, ``contents``, ``config``); the server's reply,
    and what chatplug must make of it: ``read(response) == expected``."""

    id: str
    reply: str | bytes
    payload: str | list[dict[str, Any]]
    options: dict[str, Any]  # chatplug's temperature, max_tokens and options (model_name: ``model``)
    model: str
    contents: Any
    config: dict[str, Any]
    read: Callable[[LLMResponse], Any]
    expected: Any
    stream: bool = False
    #: Where chatplug's body legitimately differs from the SDK's (as ``Case.body_differences``).
    body_differences: tuple[tuple[str, Any, Any], ...] = field(default=())

    backend = "gemini"

    def __str__(self) -> str:
        return self.id

    @property
    def path(self) -> str:
        """Where both post (the fake server routes it without the stream's ``?alt=sse``)."""
        return f"/v1beta/models/{self.model}:{'streamGenerateContent' if self.stream else 'generateContent'}"

    @property
    def chatplug_options(self) -> dict[str, Any]:
        return {"model_name": self.model, **self.options}


def text_and_usage(response: LLMResponse) -> tuple[Any, ...]:
    return response.content, response.prompt_tokens, response.completion_tokens, response.model_used


def calls_of(response: LLMResponse) -> list[tuple[str, dict[str, Any]]]:
    return [(call.name, dict(call.arguments)) for call in response.tool_calls]


#: chatplug sends a temperature and a max_tokens on every call: its defaults when none is given,
#: which the raw SDK is given too (``settings.temperature``, ``settings.max_tokens``).
DEFAULTS = {"temperature": 0.7, "max_output_tokens": 500}

GEMINI_CASES = [
    GeminiCase(
        # completion_tokens: the candidates' tokens and the thinking's (34 + 222), billed as output
        "gemini-plain", "generate_200.json", GREETING, {}, GEMINI_MODEL, GREETING, dict(DEFAULTS),
        text_and_usage, (OI, 11, 256, RECORDED_MODEL),
    ),
    GeminiCase(
        "gemini-system", "generate_200.json",
        [{"role": "system", "content": HELPFUL}, {"role": "user", "content": GREETING}],
        {"temperature": 0.2, "max_tokens": 4000}, GEMINI_MODEL,
        GREETING, {"system_instruction": HELPFUL, "temperature": 0.2, "max_output_tokens": 4000},
        text_and_usage, (OI, 11, 256, RECORDED_MODEL),
    ),
    GeminiCase(
        # the usage of the last event (39 + 206 thinking tokens)
        "gemini-stream", "stream_200.sse", GREETING, {"temperature": 0.2, "max_tokens": 128}, GEMINI_MODEL,
        GREETING, {"temperature": 0.2, "max_output_tokens": 128},
        text_and_usage, (STREAMED_OI, 11, 245, RECORDED_MODEL), stream=True,
    ),
    GeminiCase(
        "gemini-tools", "tool_200.json", FORECAST_QUESTION,
        {"temperature": 0.0, "max_tokens": 1024, "tools": [FORECAST], "tool_choice": "weather"}, GEMINI_MODEL,
        FORECAST_QUESTION,
        {"temperature": 0.0, "max_output_tokens": 1024, "tools": FORECAST_DECLARATIONS,
         "tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["weather"]}}},
        calls_of, FORECAST_CALL,
    ),
    GeminiCase(
        "gemini-stream-tools", "tool_stream_200.sse", FORECAST_QUESTION,
        {"max_tokens": 1024, "tools": [FORECAST], "tool_choice": "auto"}, GEMINI_MODEL,
        FORECAST_QUESTION,
        {"temperature": 0.7, "max_output_tokens": 1024, "tools": FORECAST_DECLARATIONS,
         "tool_config": {"function_calling_config": {"mode": "AUTO"}}},
        calls_of, FORECAST_CALL, stream=True,
    ),
    GeminiCase(
        # response_format as Google's docs give a pydantic model to the SDK: its JSON Schema
        "gemini-structured", "json_schema_200.json",
        [{"role": "user", "content": "Generate information about a person named Alice who is 30 years old."}],
        {"temperature": 0.0, "max_tokens": 64, "response_format": Person}, GEMINI_MODEL,
        "Generate information about a person named Alice who is 30 years old.",
        {"temperature": 0.0, "max_output_tokens": 64, "response_mime_type": "application/json",
         "response_json_schema": Person.model_json_schema()},
        lambda response: (response.parsed, response.content),
        (Person(name="Alice", age=30, city="Paris"), '{"age":30,"city":"Paris","name":"Alice"}'),
    ),
    GeminiCase(
        # an image's bytes, and a data: URL (Gemini fetches no other URL: chatplug refuses those)
        "gemini-image", gemini_text("A dot, twice."),
        [{"role": "user", "content": [{"type": "text", "text": "What is in these?"},
                                      {"type": "image", "data": PNG, "media_type": "image/png"},
                                      {"type": "image", "url": f"data:image/png;base64,{ENCODED}"}]}],
        {"temperature": 0.5, "max_tokens": 64}, GEMINI_MODEL,
        ["What is in these?", types.Part.from_bytes(data=PNG, mime_type="image/png"),
         types.Part.from_bytes(data=PNG, mime_type="image/png")],
        {"temperature": 0.5, "max_output_tokens": 64},
        lambda response: response.content, "A dot, twice.",
    ),
    GeminiCase(
        # reasoning_effort on Gemini 3: a thinking level, the thought summaries asked for
        "gemini-thinking", "thinking_result_200.json", FORECAST_QUESTION, {"reasoning_effort": "high"},
        GEMINI3_MODEL, FORECAST_QUESTION,
        {**DEFAULTS, "thinking_config": {"thinking_level": "HIGH", "include_thoughts": True}},
        lambda response: (response.reasoning.startswith("**My Immediate Thoughts"), response.content,
                          response.reasoning_tokens),
        (True, HOT, 56),
    ),
    GeminiCase(
        # reasoning_effort on Gemini 2.5: a thinking budget (Google's mapping: low is 1024 tokens)
        "gemini-stream-thinking-tools", "g25_thinking_tool_stream_200.sse", FORECAST_QUESTION,
        {"reasoning_effort": "low", "tools": [FORECAST]}, GEMINI_MODEL, FORECAST_QUESTION,
        {**DEFAULTS, "tools": FORECAST_DECLARATIONS,
         "thinking_config": {"thinking_budget": 1024, "include_thoughts": True}},
        lambda response: (bool(response.reasoning), calls_of(response)), (True, FORECAST_CALL), stream=True,
    ),
    GeminiCase(
        # the options chatplug passes into the generation config, under the config's names
        "gemini-options", "generate_200.json", GREETING,
        {"temperature": 0.2, "max_tokens": 64, "stop": ["\n\n"], "seed": 7, "top_p": 0.9, "top_k": 40},
        GEMINI_MODEL, GREETING,
        {"temperature": 0.2, "max_output_tokens": 64, "stop_sequences": ["\n\n"], "seed": 7, "top_p": 0.9,
         "top_k": 40},
        text_and_usage, (OI, 11, 256, RECORDED_MODEL),
    ),
]  # fmt: skip

#: The one header chatplug's async calls send and the raw SDK's do not: chatplug's async clients
#: are httpx2 clients on chatplug's aiohttp transport (``toolkit.async_transport_options``), which
#: send httpx's default ``Connection: keep-alive``; the raw SDK's own aiohttp session sends no
#: Connection header (HTTP/1.1 keeps the connection alive all the same). name -> (raw SDK's, chatplug's).
GEMINI_ASYNC_HEADERS: dict[str, tuple[Any, Any]] = {"connection": (ABSENT, "keep-alive")}


def gemini_client() -> genai.Client:
    """A raw SDK client made as chatplug makes its own (from the environment the test set)."""
    options = types.HttpOptions(
        base_url=os.environ["GEMINI_BASE_URL"], api_version="v1beta", timeout=round(settings.timeout * 1000)
    )
    return genai.Client(api_key=os.environ["GEMINI_API_KEY"], http_options=options)


def generate_sync(case: GeminiCase) -> None:
    """The raw SDK's ``generate_content()`` (or ``generate_content_stream()``, read whole) for ``case``."""
    with gemini_client() as client:
        arguments = {"model": case.model, "contents": case.contents, "config": case.config}
        if case.stream:
            assert list(client.models.generate_content_stream(**arguments))
        else:
            assert client.models.generate_content(**arguments).candidates


async def generate_async(case: GeminiCase) -> None:
    async with gemini_client().aio as client:
        arguments = {"model": case.model, "contents": case.contents, "config": case.config}
        if case.stream:
            assert [chunk async for chunk in await client.models.generate_content_stream(**arguments)]
        else:
            assert (await client.models.generate_content(**arguments)).candidates


def gemini_sent_both_ways(case: GeminiCase, mode: str, server: FakeServer) -> tuple[Recorded, Recorded, LLMResponse]:
    """The requests the server got from chatplug's call and from the raw SDK, in that order, and
    chatplug's response."""
    if mode == "sync":
        response = chatplug_sync(case)
        generate_sync(case)
    else:

        async def both() -> LLMResponse:
            response = await chatplug_async(case)
            await generate_async(case)
            return response

        response = asyncio.run(both())
    assert response.success, response.error
    assert len(server.requests) == 2, [request.path for request in server.requests]
    ours, theirs = server.requests
    return ours, theirs, response


def assert_same_gemini_request(case: GeminiCase, mode: str, ours: Recorded, theirs: Recorded) -> None:
    assert (
        (ours.method, ours.path)
        == (theirs.method, theirs.path)
        == ("POST", case.path + ("?alt=sse" if case.stream else ""))
    )
    assert json_differences(theirs.json(), ours.json()) == list(case.body_differences)
    theirs_headers, ours_headers = headers_of(theirs), headers_of(ours)
    # the SDK's own headers were sent (the comparison is not vacuous), and chatplug's timeout
    assert theirs_headers["x-goog-api-client"].startswith(f"google-genai-sdk/{genai.__version__} ")
    assert theirs_headers["x-server-timeout"] == str(math.ceil(settings.timeout))
    assert ours_headers["x-goog-api-key"] == GEMINI_KEY
    expected = GEMINI_ASYNC_HEADERS if mode == "async" else {}
    assert header_differences(theirs_headers, ours_headers, frozenset()) == expected


@pytest.fixture
def gemini_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """A fake Gemini answering the case's path with its reply; GEMINI_BASE_URL points at it, and
    GEMINI_API_KEY is set (the SDK's own variables, which would win, unset)."""
    case: GeminiCase = request.node.callspec.params["case"]
    for variable in (
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_API_VERSION",
        "GOOGLE_GENAI_HTTP_CLIENT",
    ):
        monkeypatch.delenv(variable, raising=False)
    server = FakeServer()
    monkeypatch.setenv("GEMINI_BASE_URL", server.url)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    server.route("POST", case.path, gemini_reply(case.reply))
    yield server
    chatplug.close()
    server.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", GEMINI_CASES, ids=str)
# The raw SDK's async client makes its own aiohttp session, of a class that aiohttp warns of (chatplug's
# clients are not it: the SDK is given chatplug's).
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
def test_gemini_generate_content_and_chatplug_send_the_same_request(
    case: GeminiCase, mode: str, gemini_server: FakeServer
) -> None:
    ours, theirs, response = gemini_sent_both_ways(case, mode, gemini_server)
    assert_same_gemini_request(case, mode, ours, theirs)
    assert case.read(response) == case.expected


# -- the comparison itself ----------------------------------------------------------------------


def test_json_differences_is_exact() -> None:
    """What the body comparison would report: a field added, renamed, or sent as another JSON type."""
    base = {"model": "m", "temperature": 0.0, "stream_options": {"include_usage": True}, "stop": ["a"]}
    assert json_differences(base, dict(reversed(base.items()))) == []  # key order means nothing
    assert json_differences(base, {**base, "seed": 7}) == [("$.seed", ABSENT, 7)]
    assert json_differences(base, {**base, "temperature": 0}) == [("$.temperature", 0.0, 0)]
    assert json_differences(base, {**base, "stream_options": {"include_usage": 1}}) == [
        ("$.stream_options.include_usage", True, 1)
    ]
    renamed = {**{k: v for k, v in base.items() if k != "stop"}, "stop_sequences": ["a"]}
    assert json_differences(base, renamed) == [("$.stop", ["a"], ABSENT), ("$.stop_sequences", ABSENT, ["a"])]
    assert json_differences(base, {**base, "stop": ["a", "b"]}) == [("$.stop", ["a"], ["a", "b"])]
    assert header_differences({"a": "1", "b": "2"}, {"a": "1", "c": "3"}, frozenset()) == {
        "b": ("2", ABSENT),
        "c": (ABSENT, "3"),
    }
