"""Property-based tests (hypothesis): whatever a caller passes (any prompt, huge or empty or with
lone surrogates; messages of any JSON-ish shape; any temperature, max_tokens, model name, backend
name; any keyword with any value), a call gives an ``LLMResponse`` and never raises; its ``error``
is of bounded size and its ``to_dict()`` strict JSON; and what chatplug refuses
(``invalid_input`` / ``config``) was never sent. No network: the ``testing`` backend counts what
it gets, and one property drives the real ollama backend against a loopback fake server.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatplug
from chatplug import ErrorKind, LLMResponse
from chatplug.testing import scripted

from .conftest import ollama_reply
from .fakeserver import FakeServer

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: The most an ``error`` may hold: chatplug caps messages at 4,000 characters (plus the backend's name).
ERROR_LIMIT = 4500
#: Kinds that mean "chatplug refused it": nothing may have been sent.
REFUSED = (ErrorKind.INVALID_INPUT, ErrorKind.CONFIG)

# -- strategies -----------------------------------------------------------------------------

#: Any character, lone surrogates (category Cs) included: hypothesis leaves them out by default.
ANY_CHAR = st.characters(exclude_categories=())
any_text = st.text(ANY_CHAR, max_size=40)
#: Big texts, made by repetition (cheap to generate): up to 2 MB, with or without a surrogate.
huge_text = st.builds(
    lambda piece, n, tail: piece * n + tail,
    st.sampled_from(["a", " ", "é", "\U0001f600", "<p>x</p>"]),
    st.integers(0, 2 * 2**20),
    st.sampled_from(["", "\ud800", "z"]),
)
texts = st.one_of(any_text, huge_text, st.sampled_from(["", " ", "\n", "Hi", "\ud800", "a\udfffb"]))

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**40), 10**40),
    st.sampled_from([0, 1, 2, 2**31 - 1, 2**31, 10**40, -1, 0.5, 2.0000001]),
    st.decimals(allow_nan=True),
    st.fractions(),
)
#: JSON-ish leaves, and what is no JSON at all.
leaves = st.one_of(
    st.none(), st.booleans(), numbers, texts, st.binary(max_size=20), st.just(object()), st.just(...),
    st.sets(st.integers(), max_size=2),
)  # fmt: skip
json_ish = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(any_text, st.sampled_from(["role", "content", "type", "text"])), inner, max_size=4),
    ),
    max_leaves=12,
)
#: Deep nesting (recursion limits) without hypothesis building it step by step.
deep = st.builds(lambda n, leaf: _nest(n, leaf), st.integers(0, 5000), leaves)


class Deep(list):  # type: ignore[type-arg]
    """A list holding a deeply nested value, shown short: hypothesis's printer would recurse."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Deep(<nested {self.depth} deep>)")

    depth = 0


def _nest(depth: int, leaf: object) -> object:
    value: object = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"content": value}
    deep = Deep([value])
    deep.depth = depth
    return deep


ROLES = ["system", "user", "assistant", "tool", "", "User", "developer"]
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts}),  # mostly plausible
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(ROLES),
            "content": st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=3),
        }
    ),
    st.dictionaries(
        st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "name", "x"]), json_ish, max_size=4
    ),
    json_ish,
)
messages_arg = st.one_of(st.lists(message, max_size=5), st.tuples(message), json_ish, deep)

temperatures = st.one_of(st.none(), numbers, texts, st.booleans(), json_ish)
max_tokens_arg = st.one_of(st.none(), numbers, texts, st.booleans(), json_ish)

#: Installed backends other than ``testing``: a name or prefix naming one would leave the fake
#: (and ``local`` would load a model), so they are left out where the testing backend answers.
REAL = ("ollama", "openai", "anthropic", "gemini", "local")


def _not_real(value: object) -> bool:
    return not (isinstance(value, str) and value.strip().partition(":")[0].strip() in REAL)


model_names = st.one_of(
    st.none(), texts, st.sampled_from(["testing:m", "testing:", ":m", "m:", "llama3.2:1b", " "]), json_ish
).filter(_not_real)
backends = st.one_of(st.none(), st.just("testing"), texts, json_ish).filter(_not_real)

#: The public functions' own parameter names: passing one twice is Python's TypeError, not chatplug's.
PARAMETERS = {"prompt", "messages", "model_name", "temperature", "max_tokens", "backend"}
#: chatplug's own keywords first (the first 7), then reserved, provider and misspelt ones.
CHATPLUG_KEYS = ["timeout", "max_retries", "fallbacks", "fallback_on", "tools", "tool_choice", "response_format",
                 "model", "stream", "options", "stop", "seed", "top_k", "temprature", "max_token",
                 "extra_body"]  # fmt: skip
option_keys = st.one_of(st.sampled_from(CHATPLUG_KEYS), st.text(ANY_CHAR, min_size=1, max_size=20)).filter(
    lambda key: key not in PARAMETERS
)
option_values = st.one_of(json_ish, deep, huge_text)
options_arg = st.dictionaries(option_keys, option_values, max_size=3).filter(
    lambda options: all(_not_real(name) for name in _names(options.get("fallbacks")))
)


def _names(value: object) -> list[object]:
    if isinstance(value, str):
        return list(value.split(","))
    return list(value) if isinstance(value, (list, tuple)) else []


# -- checks ---------------------------------------------------------------------------------


def check(response: object, sent: int) -> None:
    """A response, never an exception; a bounded error; strict JSON; a refusal sent nothing."""
    assert isinstance(response, LLMResponse)
    if response.success:
        assert response.error is None and response.error_kind is None
        assert sent == response.attempts >= 1
    else:
        assert isinstance(response.error, str) and response.error
        assert len(response.error) <= ERROR_LIMIT, len(response.error)
        assert isinstance(response.error_kind, ErrorKind)
        if response.error_kind in REFUSED:
            assert sent == 0, response.error
    assert response.retry_after is None or (math.isfinite(response.retry_after) and response.retry_after >= 0)
    json.dumps(response.to_dict(), allow_nan=False)  # strict JSON: no NaN, no inf


@pytest.fixture
def no_real_backend(monkeypatch: pytest.MonkeyPatch, closed_port: int) -> None:
    """Should anything reach a real backend all the same, it goes nowhere but a closed loopback port."""
    addresses = (("OLLAMA_HOST", ""), ("OPENAI_BASE_URL", "/v1"), ("ANTHROPIC_BASE_URL", ""), ("GEMINI_BASE_URL", ""))
    for var, path in addresses:
        monkeypatch.setenv(var, f"http://127.0.0.1:{closed_port}{path}")


@pytest.fixture
def fake() -> Iterator[chatplug.testing.FakeLLM]:
    with scripted() as fake:
        yield fake


def _sent(fake: chatplug.testing.FakeLLM, before: int) -> int:
    return len(fake.requests) - before


# -- properties: the testing backend ---------------------------------------------------------


@FAST
@given(prompt=st.one_of(texts, json_ish), model=model_names, temperature=temperatures, limit=max_tokens_arg,
       backend=backends, options=options_arg)  # fmt: skip
def test_any_prompt_gives_a_response(
    no_real_backend: None,
    fake: chatplug.testing.FakeLLM,
    prompt: Any,
    model: Any,
    temperature: Any,
    limit: Any,
    backend: Any,
    options: dict[str, Any],
) -> None:
    before = len(fake.requests)
    response = chatplug.generate_completion_sync(prompt, model, temperature, limit, backend=backend, **options)
    check(response, _sent(fake, before))


@FAST
@given(messages=messages_arg, model=model_names, temperature=temperatures, limit=max_tokens_arg, options=options_arg)
def test_any_messages_give_a_response(
    no_real_backend: None,
    fake: chatplug.testing.FakeLLM,
    messages: Any,
    model: Any,
    temperature: Any,
    limit: Any,
    options: dict[str, Any],
) -> None:
    before = len(fake.requests)
    response = chatplug.generate_completion_with_messages_sync(messages, model, temperature, limit, **options)
    check(response, _sent(fake, before))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(texts, json_ish), messages=messages_arg, temperature=temperatures, options=options_arg)
def test_the_async_twins_too(
    no_real_backend: None,
    fake: chatplug.testing.FakeLLM,
    prompt: Any,
    messages: Any,
    temperature: Any,
    options: dict[str, Any],
) -> None:
    async def both() -> list[tuple[LLMResponse, int]]:
        results = []
        for call, payload in (
            (chatplug.generate_completion_async, prompt),
            (chatplug.generate_completion_with_messages_async, messages),
        ):
            before = len(fake.requests)
            response = await call(payload, None, temperature, **options)
            results.append((response, _sent(fake, before)))
        return results

    for response, sent in asyncio.run(both()):
        check(response, sent)


@FAST
@given(text=texts)
def test_valid_text_is_answered_and_bad_text_refused(fake: chatplug.testing.FakeLLM, text: str) -> None:
    """The line between the two: text that has something in it and encodes as UTF-8 is sent
    (and echoed back whole); anything else is refused, unsent."""
    before = len(fake.requests)
    response = chatplug.generate_completion_sync(text)
    check(response, _sent(fake, before))
    try:
        text.encode("utf-8")
        valid = bool(text.strip())
    except UnicodeEncodeError:
        valid = False
    if valid:
        assert response.success and response.content == text
    else:
        assert response.error_kind is ErrorKind.INVALID_INPUT


@FAST
@given(value=st.one_of(numbers, texts, st.booleans(), st.none()))
def test_temperature_and_max_tokens_are_sent_only_when_in_range(fake: chatplug.testing.FakeLLM, value: Any) -> None:
    before = len(fake.requests)
    response = chatplug.generate_completion_sync("Hi", temperature=value)
    check(response, _sent(fake, before))
    in_range = value is None or (
        isinstance(value, (int, float, Decimal, Fraction)) and not isinstance(value, bool) and _finite_in(value, 0, 2)
    )
    assert response.success is in_range, response.error

    before = len(fake.requests)
    response = chatplug.generate_completion_sync("Hi", max_tokens=value)
    check(response, _sent(fake, before))
    whole = value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**31)
    assert response.success is whole, response.error
    if whole and value is not None:
        assert fake.requests[-1].max_tokens == value


def _finite_in(value: Any, low: float, high: float) -> bool:
    try:
        number = float(value)
    except (OverflowError, ValueError):
        return False
    return math.isfinite(number) and low <= number <= high


# -- a property against the real ollama backend ----------------------------------------------


@pytest.fixture
def ollama_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    server = FakeServer()
    server.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
    monkeypatch.setenv("OLLAMA_HOST", server.url)
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    yield server
    chatplug.close()
    server.close()


OLLAMA_KEYS = ["stop", "seed", "num_ctx", "keep_alive", "think", "format", "temprature", "model"]
ollama_options = st.dictionaries(
    st.one_of(st.sampled_from(OLLAMA_KEYS), st.text(ANY_CHAR, min_size=1, max_size=12)).filter(
        lambda key: key not in PARAMETERS | set(CHATPLUG_KEYS[:7])
    ),
    st.one_of(json_ish, deep),
    max_size=3,
)


@FAST
@given(payload=st.one_of(texts, messages_arg), model=st.one_of(st.none(), texts).filter(_not_real),
       temperature=temperatures, limit=max_tokens_arg, options=ollama_options)  # fmt: skip
def test_the_ollama_backend_sends_nothing_it_refuses(
    ollama_server: FakeServer, payload: Any, model: Any, temperature: Any, limit: Any, options: dict[str, Any]
) -> None:
    """The real SDK over a socket: whatever is passed, a response; a refusal sends no request, a
    success exactly one; a reply the server sent is never blamed on the caller or the plugin."""
    before = len(ollama_server.requests)
    call = (
        chatplug.generate_completion_sync
        if isinstance(payload, str)
        else chatplug.generate_completion_with_messages_sync
    )
    response = call(payload, model, temperature, limit, **options)
    sent = len(ollama_server.requests) - before
    check(response, sent)
    assert response.error_kind is not ErrorKind.PLUGIN, response.error
    if sent:
        assert response.error_kind not in REFUSED, response.error


@pytest.mark.parametrize("depth", [150, 400, 700, 900, 990])
def test_an_option_nested_short_of_the_recursion_limit_is_invalid_input(ollama_server: FakeServer, depth: int) -> None:
    """``json.dumps`` takes values nested a few hundred levels short of Python's recursion limit,
    which the steps after validation did not survive (a ``RecursionError``, reported as a plugin
    failure, that hypothesis found at 991 levels)."""
    value = _nest(depth, None)
    for response in (
        chatplug.generate_completion_sync("Hi", stop=value),
        asyncio.run(chatplug.generate_completion_async("Hi", stop=value)),
    ):
        assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
        assert "option 'stop' is nested more than 100 levels deep" in (response.error or "")
    assert ollama_server.requests == []


def test_a_long_unknown_backend_name_is_shown_cut(fake: chatplug.testing.FakeLLM) -> None:
    """The error names the backend the call was for, which a caller's ``backend=`` can make any
    length: shown cut, so ``error`` stays within its bound (hypothesis found 4,501 characters)."""
    response = chatplug.generate_completion_sync("Hi", backend="a" * 4436, timeout=None)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    said = "timeout must be a positive, finite number of seconds, got None."
    assert response.error == f"{'a' * 200}... (4436 characters): {said}"
    assert response.backend == "a" * 4436 and response.exception.backend == "a" * 4436  # the name itself is kept


def test_an_option_nested_100_levels_deep_is_sent(ollama_server: FakeServer) -> None:
    schema: dict[str, Any] = {}
    for _ in range(99):
        schema = {"a": schema}
    assert chatplug.generate_completion_sync("Hi", format=schema).success  # 100 levels
    assert ollama_server.requests[-1].json()["format"] == schema
    response = chatplug.generate_completion_sync("Hi", format={"a": schema})  # 101
    assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
    assert len(ollama_server.requests) == 1


@pytest.mark.parametrize("name", ["temperature", "max_tokens", "model_name", "timeout", "fallbacks", "tools"])
def test_a_deeply_nested_argument_is_invalid_input(fake: chatplug.testing.FakeLLM, name: str) -> None:
    response = chatplug.generate_completion_sync("Hi", **{name: _nest(3000, None)})
    check(response, len(fake.requests))
    assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
