"""``reasoning_tokens`` from a backend to the caller (whole, streamed, cached, failed), and a
refusal's ``finish_reason`` given to the failed response: what the pipeline does with what a
backend says, whichever backend it is."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import chatplug
from chatplug import BadRequestError, ChatBackend, ChatChunk, ChatRequest, ChatResult

from .conftest import registered


class Thinker(ChatBackend):
    """Thinks 7 tokens of its 12 (as Gemini bills them: in the completion and apart)."""

    default_model = "thinker-1"
    calls = 0

    def complete(self, request: ChatRequest) -> ChatResult:
        Thinker.calls += 1
        return ChatResult("4", "thinker-1", prompt_tokens=3, completion_tokens=12, reasoning_tokens=7)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return self.complete(request)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        yield ChatChunk(text="4", prompt_tokens=3, completion_tokens=1, reasoning_tokens=4)
        yield ChatChunk(completion_tokens=12, reasoning_tokens=7, finish_reason="stop")

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        for chunk in self.stream(request):
            yield chunk


class Refuser(ChatBackend):
    default_model = "refuser-1"

    def complete(self, request: ChatRequest) -> ChatResult:
        raise BadRequestError("the prompt was blocked (SAFETY).", finish_reason="content_filter")

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return self.complete(request)


@pytest.fixture
def thinker() -> Iterator[None]:
    Thinker.calls = 0
    with registered("thinker", Thinker), registered("refuser", Refuser):
        yield


def test_a_whole_reply_says_its_reasoning_tokens(thinker: None) -> None:
    response = chatplug.generate_completion_sync("2+2?", backend="thinker")
    assert (response.completion_tokens, response.reasoning_tokens, response.tokens_used) == (12, 7, 15)
    assert response.to_dict()["reasoning_tokens"] == 7
    response = asyncio.run(chatplug.generate_completion_async("2+2?", backend="thinker"))
    assert response.reasoning_tokens == 7


def test_a_stream_keeps_the_last_count_said(thinker: None) -> None:
    stream = chatplug.stream_completion_sync("2+2?", backend="thinker")
    assert [chunk.text for chunk in stream] == ["4"]  # the last chunk, with no text, is not passed on
    assert (stream.response.completion_tokens, stream.response.reasoning_tokens) == (12, 7)


def test_a_backend_that_says_nothing_gives_zero() -> None:
    response = chatplug.generate_completion_sync("hi", backend="testing")
    assert response.success and response.reasoning_tokens == 0


def test_a_cache_hit_keeps_the_count(thinker: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CACHE", str(tmp_path / "cache.db"))
    first = chatplug.generate_completion_sync("2+2?", backend="thinker")
    again = chatplug.generate_completion_sync("2+2?", backend="thinker")
    assert again.cached and Thinker.calls == 1
    assert (again.completion_tokens, again.reasoning_tokens) == (first.completion_tokens, 7)


def test_a_refusal_fails_with_its_finish_reason(thinker: None) -> None:
    for response in (
        chatplug.generate_completion_sync("bad", backend="refuser"),
        asyncio.run(chatplug.generate_completion_async("bad", backend="refuser")),
    ):
        assert not response.success
        assert response.error_kind == "bad_request"
        assert response.finish_reason == "content_filter"
        assert "SAFETY" in (response.error or "")


def test_other_failures_have_no_finish_reason() -> None:
    response = chatplug.generate_completion_sync("hi", backend="no-such-backend")
    assert not response.success and response.finish_reason is None


def test_a_negative_count_is_the_plugins_failure(thinker: None) -> None:
    class Wrong(Thinker):
        def complete(self, request: ChatRequest) -> ChatResult:
            return ChatResult("4", "m", reasoning_tokens=-1)

    with registered("wrong", Wrong):
        response = chatplug.generate_completion_sync("2+2?", backend="wrong")
    assert response.error_kind == "plugin" and "reasoning_tokens" in (response.error or "")
