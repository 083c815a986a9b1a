"""``chatplug.testing``: test code that uses chatplug without any model server.

The ``testing`` backend answers from a script instead of a provider, and records every
request it gets, sync or async. Select it for a block of code with ``scripted``::

    import chatplug
    from chatplug.testing import scripted

    def test_my_agent_retries_when_rate_limited() -> None:
        with scripted(chatplug.RateLimitError("slow down", retry_after=2), "Paris") as llm:
            assert my_agent("Capital of France?") == "Paris"   # my_agent calls chatplug
        assert len(llm.requests) == 2
        assert llm.prompts == ["Capital of France?", "Capital of France?"]

Each call takes the next scripted reply: a ``str`` (the reply's content), a full
``ChatResult``, a ``ChatplugError`` instance (the call fails with that error's kind, message and
``retry_after``), a ``ToolCall`` (the model asks for that tool), a list of chunks (``str``,
``ChatChunk`` or ``ToolCall``, streamed one by one; a ``ChatplugError`` after them is a fault after
that many chunks; a whole call gets them joined), or a function of the ``ChatRequest`` returning
one of those. When the script is used up (or was
empty), calls get ``default``: by default the last user message, echoed.

    with scripted(["Hel", "lo", chatplug.ServerError("connection reset")]):
        with chatplug.stream_completion_sync("Hi") as stream:
            print("".join(chunk.text for chunk in stream))   # "Hello"
        stream.response.error_kind                          # "server", content "Hello"

As a pytest fixture, one line in your ``conftest.py``::

    import pytest
    import chatplug.testing

    llm = pytest.fixture(chatplug.testing.fake_llm)   # then: def test_x(llm): llm.script("hi")

Without any code, ``LLM_BACKEND=testing`` makes every call echo its last user message.

``scripted`` selects the backend through ``chatplug.settings.backend``, so calls that name a
backend themselves (``backend="openai"``, ``model_name="openai:gpt-4o"``) are not redirected:
leave the backend to configuration in code you want to test this way.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeAlias, TypeVar

from ._core.backend import ChatBackend
from ._core.checks import thaw
from ._core.chunks import ChatChunk
from ._core.exceptions import ChatplugError
from ._core.settings import settings
from ._core.tools import ToolCall, ToolCallDelta
from ._core.values import ChatRequest, ChatResult, text_of
from .hookspecs import hookimpl

__all__ = ["NAME", "Chunks", "FakeLLM", "Reply", "TestingBackend", "current", "echo", "fake_llm", "scripted"]

T = TypeVar("T")

#: The backend name this module registers.
NAME = "testing"

#: A streamed reply: its chunks, and optionally a fault after them.
Chunks: TypeAlias = Sequence[str | ChatChunk | ToolCall | ChatplugError]
#: What a scripted call answers with (see the module docstring).
Reply: TypeAlias = (
    str | ChatResult | ChatplugError | Chunks | Callable[[ChatRequest], str | ChatResult | ChatplugError | Chunks]
)


def echo(request: ChatRequest) -> str:
    """The default reply: the content of the last user message (or of the last message)."""
    users = [m for m in request.messages if m["role"] == "user"] or list(request.messages)
    return text_of(users[-1])


class FakeLLM:
    """A script of replies and the requests that consumed them. Safe to share between threads.

    ``requests`` holds every ``ChatRequest`` the backend got while this fake was active,
    in order, including those answered with a failure.
    """

    def __init__(self, *replies: Reply, default: Reply = echo, keep: int | None = None) -> None:
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque(_checked(replies))
        self._requests: deque[ChatRequest] = deque(maxlen=keep)
        (self.default,) = _checked([default])

    def script(self, *replies: Reply) -> FakeLLM:
        """Queue more replies, after those not yet used. Returns ``self``."""
        checked = _checked(replies)
        with self._lock:
            self._script.extend(checked)
        return self

    @property
    def requests(self) -> list[ChatRequest]:
        """The requests received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def prompts(self) -> list[str]:
        """The last user message of each request, in order."""
        return [echo(request) for request in self.requests]

    @property
    def pending(self) -> int:
        """How many scripted replies have not been used yet."""
        with self._lock:
            return len(self._script)

    def answer(self, request: ChatRequest) -> ChatResult:
        """Record ``request`` and return, or raise, the next reply. The backend calls this."""
        chunks = list(self.chunks(request))
        text = "".join(chunk.text for chunk in chunks)
        return ChatResult(
            content=text,
            model=next((c.model for c in chunks if c.model), request.model),
            prompt_tokens=_last(chunk.prompt_tokens for chunk in chunks),
            completion_tokens=_last(chunk.completion_tokens for chunk in chunks),
            finish_reason=_last(chunk.finish_reason for chunk in chunks),
            reasoning="".join(chunk.reasoning for chunk in chunks),
            tool_calls=tuple(call for chunk in chunks for call in chunk.tool_calls),
        )

    def chunks(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """Record ``request`` and yield the next reply as chunks (raising a scripted fault where
        it stands). The backend streams these."""
        with self._lock:
            self._requests.append(request)
            reply = self._script.popleft() if self._script else self.default
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, ChatResult):
            calls = tuple(_delta(i, call) for i, call in enumerate(reply.tool_calls))
            yield ChatChunk(reply.content, reply.reasoning, reply.model, reply.prompt_tokens,
                            reply.completion_tokens, reply.finish_reason, calls)  # fmt: skip
            return
        parts = [reply] if isinstance(reply, (str, ChatplugError, ToolCall)) else reply
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"chatplug.testing: a reply function returned {reply!r}: not a reply")
        completion = 0
        count = 0
        for part in parts:
            if isinstance(part, ChatplugError):
                raise part.with_traceback(None)  # a reply used again must not grow its traceback
            if isinstance(part, ToolCall):
                chunk = ChatChunk(tool_calls=(_delta(count, part),))
                count += 1
            else:
                chunk = ChatChunk(part) if isinstance(part, str) else part
            completion += len(chunk.text.split())
            yield chunk
        yield ChatChunk(prompt_tokens=_words(request), completion_tokens=completion, finish_reason="stop")


def _last(values: Iterable[T | None]) -> T | None:
    found = None
    for value in values:
        found = value if value is not None else found
    return found


def _delta(index: int, call: ToolCall | ToolCallDelta) -> ToolCallDelta:
    if isinstance(call, ToolCallDelta):
        return call
    return ToolCallDelta(index, call.id, call.name, call.raw_arguments or json.dumps(thaw(call.arguments)))


def _words(request: ChatRequest) -> int:
    return sum(len(text_of(m).split()) for m in request.messages)


def _checked(replies: Iterable[Reply]) -> list[Reply]:
    """``replies``, if each is one; a mistake fails where the test scripts it, not at a call."""
    checked = list(replies)
    for reply in checked:
        if isinstance(reply, type):  # a class is callable, but RateLimitError(request) is no reply
            raise TypeError(f"chatplug.testing: script an instance, e.g. {reply.__name__}('...'), not the class")
        chunks = isinstance(reply, (list, tuple)) and all(
            isinstance(part, (str, ChatChunk, ToolCall, ChatplugError)) for part in reply
        )
        if not isinstance(reply, (str, ChatResult, ChatplugError, ToolCall)) and not chunks and not callable(reply):
            raise TypeError(
                f"chatplug.testing: a scripted reply is a str, a ChatResult, a ChatplugError, a list of chunks "
                f"or a function of the ChatRequest returning one, got {reply!r}"
            )
    return checked


# The fakes in use: the innermost ``scripted`` block wins; outside any, the ambient one
# (which keeps only the last 1000 requests, for processes run with LLM_BACKEND=testing).
_ambient = FakeLLM(keep=1000)
_active: list[FakeLLM] = []
_active_lock = threading.Lock()


def current() -> FakeLLM:
    """The fake that answers calls now: the innermost active ``scripted`` one, else the ambient one."""
    with _active_lock:
        return _active[-1] if _active else _ambient


@contextmanager
def scripted(*replies: Reply, default: Reply = echo, retries: int = 0) -> Iterator[FakeLLM]:
    """Answer chatplug calls from ``replies`` for the duration of the block.

    Sets ``chatplug.settings.backend = "testing"`` and ``chatplug.settings.max_retries = retries``
    (0: a scripted failure reaches the code under test at once, not after chatplug's own retries)
    and puts back the previous settings on exit (overrides set in code, or none, so the
    environment applies again). Blocks may nest.
    """
    fake = FakeLLM(*replies, default=default)
    # The overrides, not the values the environment gives.
    saved = {name: settings._overrides.get(name) for name in ("backend", "max_retries")}
    with _active_lock:
        _active.append(fake)
    settings.backend = NAME
    settings.max_retries = retries
    try:
        yield fake
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)
        with _active_lock:
            _active.remove(fake)


def fake_llm() -> Iterator[FakeLLM]:
    """A pytest fixture body: ``llm = pytest.fixture(chatplug.testing.fake_llm)`` in conftest.py.

    Each test gets a fresh, empty ``FakeLLM`` with the ``testing`` backend selected; queue
    replies with ``llm.script(...)``.
    """
    with scripted() as fake:
        yield fake


class TestingBackend(ChatBackend):
    """The ``testing`` backend: hands each request to ``current()``."""

    __test__ = False  # not a test class, for pytest's collection
    default_model = "testing"
    capabilities = frozenset({"tools", "images", "response_format"})

    def complete(self, request: ChatRequest) -> ChatResult:
        return current().answer(request)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return current().answer(request)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return current().chunks(request)

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        for chunk in current().chunks(request):
            yield chunk


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register(NAME, TestingBackend)
