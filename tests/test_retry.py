"""The pipeline's one retry and fallback policy, on the ``testing`` backend and a second plugin
backend: what is retried, how long it waits, the deadline, fallbacks, their cooldown, and what the
response and the observers say about the attempts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import chatplug
import chatplug._pipeline.retry
from chatplug import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    ErrorKind,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    hookimpl,
    stream_completion_sync,
)
from chatplug.testing import scripted


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff waits of a millisecond: the policy is under test, not the clock."""
    monkeypatch.setattr(chatplug._pipeline.retry, "BACKOFF_BASE", 0.001)


class Spare(ChatBackend):
    """A second backend to fall back on: answers "spare", or fails as ``Spare.failure`` says."""

    default_model = "spare-1"
    failure: ClassVar[chatplug.ChatplugError | None] = None
    calls: ClassVar[list[str]] = []

    def complete(self, request: ChatRequest) -> ChatResult:
        Spare.calls.append(request.model)
        if Spare.failure is not None:
            raise Spare.failure
        return ChatResult("spare", request.model, 1, 1, "stop")

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return self.complete(request)


class SparePlugin:
    @hookimpl
    def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
        register("spare", Spare)


@pytest.fixture
def spare() -> Iterator[type[Spare]]:
    Spare.failure, Spare.calls = None, []
    name = chatplug.register_plugin(SparePlugin(), "spare-plugin")
    yield Spare
    chatplug.unregister_plugin(name)


BOTH = pytest.mark.parametrize(
    "call",
    [generate_completion_sync, lambda *a, **k: asyncio.run(generate_completion_async(*a, **k))],
    ids=["sync", "async"],
)


@BOTH
@pytest.mark.parametrize(
    "error",
    [
        chatplug.APIConnectionError("refused"),
        chatplug.APITimeoutError("slow"),
        chatplug.RateLimitError("slow down"),
        chatplug.OverloadedError("busy"),
        chatplug.ServerError("500"),
    ],
)
def test_transient_failures_are_retried(call: Callable[..., LLMResponse], error: chatplug.ChatplugError) -> None:
    with scripted(error, error, "finally", retries=2) as fake:
        response = call("Hi")
    assert response.success and response.content == "finally"
    assert response.attempts == 3 and len(fake.requests) == 3
    assert len(response.attempt_errors) == 2 and all("testing:" in e for e in response.attempt_errors)


@BOTH
@pytest.mark.parametrize(
    "error",
    [
        chatplug.AuthenticationError("bad key"),
        chatplug.NotFoundError("no model"),
        chatplug.BadRequestError("bad"),
        chatplug.ContextLengthExceededError("long"),
        chatplug.ConfigError("config"),
    ],
)
def test_other_failures_are_not_retried(call: Callable[..., LLMResponse], error: chatplug.ChatplugError) -> None:
    with scripted(error, "never", retries=2) as fake:
        response = call("Hi")
    assert not response.success and response.error_kind is error.kind
    assert response.attempts == 1 and len(fake.requests) == 1


def test_retries_stop_at_max_retries_and_say_how_many_attempts() -> None:
    with scripted(*[chatplug.ServerError("down")] * 5, retries=2) as fake:
        response = generate_completion_sync("Hi")
    assert response.error_kind is ErrorKind.SERVER and "(3 attempts)" in (response.error or "")
    assert response.attempts == 3 and len(fake.requests) == 3
    with scripted(*[chatplug.ServerError("down")] * 5, retries=2) as fake:
        assert generate_completion_sync("Hi", max_retries=0).attempts == 1  # one urgent call asks for less
    assert len(fake.requests) == 1


def test_the_environment_sets_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MAX_RETRIES", "1")
    chatplug.settings.max_retries = None  # conftest's 0, so that the environment applies
    with scripted():
        chatplug.settings.max_retries = None  # scripted() sets 0 for its block: take it back
        chatplug.testing.current().script(chatplug.ServerError("down"), chatplug.ServerError("down"))
        assert generate_completion_sync("Hi").attempts == 2


def test_a_retry_after_that_fits_is_waited_for() -> None:
    with scripted(chatplug.RateLimitError("slow down", retry_after=0.2), "ok", retries=2):
        started = time.monotonic()
        response = generate_completion_sync("Hi")
        waited = time.monotonic() - started
    assert response.success and response.attempts == 2
    assert waited >= 0.2  # the provider's word, not the backoff's millisecond


@BOTH
def test_a_retry_after_beyond_the_deadline_fails_at_once(call: Callable[..., LLMResponse]) -> None:
    with scripted(chatplug.RateLimitError("slow down", retry_after=3600), "never", retries=2) as fake:
        started = time.monotonic()
        response = call("Hi", timeout=5)
        elapsed = time.monotonic() - started
    assert response.error_kind is ErrorKind.RATE_LIMIT and response.retry_after == 3600
    assert len(fake.requests) == 1 and elapsed < 2  # not the hour, nor the 5 s


@BOTH
def test_the_deadline_bounds_the_whole_call(call: Callable[..., LLMResponse]) -> None:
    with scripted(*[chatplug.RateLimitError("slow down", retry_after=0.3)] * 20, retries=20) as fake:
        started = time.monotonic()
        response = call("Hi", timeout=1)
        elapsed = time.monotonic() - started
    assert not response.success and response.error_kind in (ErrorKind.RATE_LIMIT, ErrorKind.TIMEOUT)
    assert elapsed < 1.5 and 2 <= len(fake.requests) <= 4  # retried within the second, not 20 times


@pytest.mark.parametrize(("value", "says"), [(0, "timeout must be"), (-1, "timeout must be"), ("x", "timeout")])
def test_bad_timeout_and_retries_arguments(value: object, says: str) -> None:
    with scripted() as fake:
        assert says in (generate_completion_sync("Hi", timeout=value).error or "")
        assert "max_retries must be" in (generate_completion_sync("Hi", max_retries=-1).error or "")
    assert fake.requests == []


# -- fallbacks -----------------------------------------------------------------------------


@BOTH
def test_a_fallback_answers_when_the_primary_keeps_failing(call: Callable[..., LLMResponse], spare: Any) -> None:
    with scripted(*[chatplug.APIConnectionError("Ollama is down")] * 3, retries=1) as fake:
        response = call("Hi", fallbacks=["spare:spare-big"])
    assert response.success and response.content == "spare"
    assert (response.backend, response.model_used) == ("spare", "spare-big")
    assert response.attempts == 3 and len(fake.requests) == 2 and spare.calls == ["spare-big"]
    assert [e.split(":")[0] for e in response.attempt_errors] == ["testing", "testing"]


def test_fallbacks_from_the_environment_and_not_on_a_bad_request(spare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_FALLBACKS", "spare")
    with scripted(chatplug.ServerError("down"), chatplug.BadRequestError("bad input")):
        assert generate_completion_sync("Hi").model_used == "spare-1"  # the backend's default model
        assert generate_completion_sync("Hi").error_kind is ErrorKind.BAD_REQUEST  # the next one would fail too
    assert spare.calls == ["spare-1"]


def test_not_found_and_auth_fall_back_only_when_asked(spare: Any) -> None:
    with scripted(chatplug.NotFoundError("no such model"), chatplug.NotFoundError("no such model")):
        assert generate_completion_sync("Hi", fallbacks=["spare"]).error_kind is ErrorKind.NOT_FOUND
        response = generate_completion_sync("Hi", fallbacks=["spare"], fallback_on=["not_found"])
    assert response.success and response.backend == "spare"


def test_every_target_failing_reports_the_last_error_and_the_others(spare: Any) -> None:
    spare.failure = chatplug.OverloadedError("spare is busy too")
    with scripted(chatplug.ServerError("down")):
        response = generate_completion_sync("Hi", fallbacks=["spare"])
    assert response.error_kind is ErrorKind.OVERLOADED and response.backend == "spare"
    assert "(2 attempts over 2 targets)" in (response.error or "")
    assert response.attempt_errors == ["testing: down"]


def test_a_target_that_keeps_failing_cools_down(spare: Any) -> None:
    with scripted(default=chatplug.APIConnectionError("down")) as fake:
        for _ in range(chatplug._pipeline.retry.COOLDOWN_AFTER):
            assert generate_completion_sync("Hi", fallbacks=["spare"]).backend == "spare"
        tried = len(fake.requests)
        response = generate_completion_sync("Hi", fallbacks=["spare"])
    assert response.success and response.backend == "spare" and response.attempts == 1
    assert len(fake.requests) == tried  # the primary was skipped while cooling down
    chatplug.close()  # forgets the cooldowns
    with scripted("back") as fake:
        assert generate_completion_sync("Hi", fallbacks=["spare"]).content == "back"


def test_a_fallback_naming_no_backend_is_refused() -> None:
    with scripted() as fake:
        response = generate_completion_sync("Hi", fallbacks=["nope:model"])
    assert response.error_kind is ErrorKind.INVALID_INPUT and "'nope:model'" in (response.error or "")
    assert fake.requests == []


def test_a_stream_is_retried_only_before_its_first_chunk(spare: Any) -> None:
    with scripted(chatplug.ServerError("down"), ["a", "b"], ["c", chatplug.ServerError("cut")], retries=2) as fake:
        with stream_completion_sync("Hi") as first:
            assert [chunk.text for chunk in first] == ["a", "b"]
        with stream_completion_sync("Hi", fallbacks=["spare"]) as second:
            assert [chunk.text for chunk in second] == ["c"]
    assert first.response.success and first.response.attempts == 2
    assert second.response.error_kind is ErrorKind.SERVER and second.response.content == "c"  # no retry after "c"
    assert len(fake.requests) == 3 and spare.calls == []


def test_observers_see_every_attempt() -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        def on_request(self, request: ChatRequest) -> None:
            seen.append(f"request {request.backend}")

        @hookimpl
        def on_response(self, request: ChatRequest | None, response: LLMResponse) -> None:
            seen.append(f"response {response.attempts}")

    name = chatplug.register_plugin(Observer(), "attempt-observer")
    try:
        with scripted(chatplug.ServerError("down"), "ok", retries=1):
            generate_completion_sync("Hi")
    finally:
        chatplug.unregister_plugin(name)
    assert seen == ["request testing", "request testing", "response 2"]
