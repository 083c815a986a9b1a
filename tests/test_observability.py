"""The observability hooks: ``on_request`` sees each request before it is sent, ``on_response``
each response after, success or failure, with timing and tokens; a hook that raises is logged
and breaks neither the call nor the other hooks. Also the example metrics plugin, in-process."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import chatplug
from chatplug import (
    ChatBackend,
    ChatRequest,
    ChatResult,
    LLMResponse,
    RateLimitError,
    generate_completion_async,
    generate_completion_sync,
    hookimpl,
)
from chatplug.testing import scripted

from .childproc import fake_distribution, python
from .fakeserver import FakeServer

METRICS_PLUGIN = Path(__file__).resolve().parents[1] / "examples/plugins/chatplug-metrics/src/chatplug_metrics"


class Recorder:
    """A plugin that records what its hooks see, and on which thread."""

    def __init__(self, on_request: Callable[[ChatRequest], None] | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.threads: list[int] = []
        self._on_request = on_request

    @hookimpl
    def on_request(self, request: ChatRequest) -> None:
        self.threads.append(threading.get_ident())
        if self._on_request is not None:
            self._on_request(request)
        self.events.append(("request", request))

    @hookimpl
    def on_response(self, request: ChatRequest | None, response: LLMResponse) -> None:
        self.threads.append(threading.get_ident())
        self.events.append(("response", request, response))


class Broken:
    @hookimpl
    def on_request(self, request: ChatRequest) -> None:
        raise RuntimeError("on_request exploded")

    @hookimpl
    def on_response(self, request: ChatRequest | None, response: LLMResponse) -> None:
        raise KeyError("on_response exploded")


@pytest.fixture
def plugins() -> Iterator[Callable[[object, str], None]]:
    """Register plugin objects in-process; each is unregistered after the test."""
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        chatplug.register_plugin(plugin, name)
        names.append(name)

    yield register
    for name in names:
        chatplug.unregister_plugin(name)


def test_request_is_seen_before_it_is_sent_and_the_response_after(plugins: Callable[[object, str], None]) -> None:
    events: list[tuple[Any, ...]] = []
    recorder = Recorder()
    recorder.events = events
    plugins(recorder, "recorder")

    backend_took: list[float] = []

    def backend(request: ChatRequest) -> str:
        start = time.perf_counter()
        events.append(("backend", request))
        backend_took.append(time.perf_counter() - start)
        return "four words of reply"

    with scripted(backend):
        response = generate_completion_sync("one two three", "tiny", 0.3, 9, seed=1)

    assert [e[0] for e in events] == ["request", "backend", "response"]
    seen = events[0][1]
    assert seen is events[1][1]  # the very request the backend got
    assert (seen.backend, seen.model, seen.temperature, seen.max_tokens) == ("testing", "tiny", 0.3, 9)
    assert dict(seen.options) == {"seed": 1}
    _, request, after = events[2]
    assert request is seen and after is response  # the very response the caller got
    assert after.success and after.backend == "testing"
    assert (after.prompt_tokens, after.completion_tokens, after.tokens_used) == (3, 4, 7)
    assert after.response_time >= backend_took[0]  # the timing covers the backend's whole call


def test_failures_reach_on_response_with_their_kind(plugins: Callable[[object, str], None]) -> None:
    recorder = Recorder()
    plugins(recorder, "recorder")
    with scripted(RateLimitError("slow down", retry_after=3)):
        failed = generate_completion_sync("hi")
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["request", "response"]
    _, request, response = recorder.events[1]
    assert request is recorder.events[0][1] and response is failed
    assert (response.success, response.error_kind, response.retry_after) == (False, "rate_limit", 3)
    assert response.response_time > 0


@pytest.mark.parametrize(
    ("call", "kind"),
    [
        (lambda: generate_completion_sync(""), "invalid_input"),
        (lambda: generate_completion_sync("hi", backend="no-such-backend"), "config"),
    ],
)
def test_calls_that_fail_before_a_request_exists(
    plugins: Callable[[object, str], None], call: Callable[[], LLMResponse], kind: str
) -> None:
    recorder = Recorder()
    plugins(recorder, "recorder")
    with scripted("never") as fake:
        response = call()
    assert [e[0] for e in recorder.events] == ["response"]  # nothing was sent
    _, request, seen = recorder.events[0]
    assert request is None and seen is response and seen.error_kind == kind
    assert fake.requests == []


def test_async_calls_are_observed_on_their_event_loop(plugins: Callable[[object, str], None]) -> None:
    recorder = Recorder()
    plugins(recorder, "recorder")

    async def main() -> tuple[list[LLMResponse], int]:
        with scripted("a", "b", RateLimitError("no")):
            responses = await asyncio.gather(*(generate_completion_async(f"q{i}") for i in range(3)))
        return responses, threading.get_ident()

    responses, loop_thread = asyncio.run(main())
    requests = [e[1] for e in recorder.events if e[0] == "request"]
    answered = [e for e in recorder.events if e[0] == "response"]
    assert sorted(r.messages[0]["content"] for r in requests) == ["q0", "q1", "q2"]
    assert sorted(id(e[2]) for e in answered) == sorted(id(r) for r in responses)  # the very responses
    assert sorted(e[2].success for e in answered) == [False, True, True]
    assert all(e[1] in requests for e in answered)
    assert set(recorder.threads) == {loop_thread}


def test_hooks_run_on_the_callers_thread(plugins: Callable[[object, str], None]) -> None:
    recorder = Recorder()
    plugins(recorder, "recorder")
    with scripted(), ThreadPoolExecutor(4) as pool:
        idents = set(pool.map(lambda _: (generate_completion_sync("hi"), threading.get_ident())[1], range(40)))
    assert set(recorder.threads) == idents


def test_hooks_with_the_real_ollama_backend(plugins: Callable[[object, str], None], ollama: FakeServer) -> None:
    sent_before: list[int] = []
    recorder = Recorder(on_request=lambda request: sent_before.append(len(ollama.requests)))
    plugins(recorder, "recorder")
    response = generate_completion_sync("Why is the sky blue?")
    assert sent_before == [0]  # on_request ran before the request reached the server
    assert len(ollama.requests) == 1
    _, request, seen = recorder.events[1]
    assert request.backend == "ollama" and seen is response
    assert seen.success and (seen.prompt_tokens, seen.completion_tokens, seen.tokens_used) == (31, 19, 50)
    assert seen.response_time > 0


def test_hooks_with_the_real_ollama_backend_failing(
    plugins: Callable[[object, str], None], closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    plugins(recorder, "recorder")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port}")
    response = asyncio.run(generate_completion_async("hi"))
    assert [e[0] for e in recorder.events] == ["request", "response"]
    assert recorder.events[1][2] is response and response.error_kind == "connection"
    assert recorder.events[1][1].backend == "ollama"


def test_a_hook_that_raises_is_logged_and_breaks_nothing(
    plugins: Callable[[object, str], None], chatplug_log: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    plugins(Broken(), "broken-first")  # hooks run before and after the recorder's,
    plugins(recorder, "recorder")  # whichever order the plugin manager calls them in
    plugins(Broken(), "broken-last")
    with scripted("fine", RateLimitError("limited")):
        ok = generate_completion_sync("hi")
        failed = asyncio.run(generate_completion_async("hi"))
    assert ok.success and ok.content == "fine"
    assert failed.error_kind == "rate_limit"
    assert [e[0] for e in recorder.events] == ["request", "response", "request", "response"]
    hook_warnings = [r for r in chatplug_log.records if "raised in" in r.getMessage()]
    assert all(r.name == "chatplug" and r.levelname == "WARNING" for r in hook_warnings)
    messages = [r.getMessage() for r in hook_warnings]
    assert len(messages) == 8  # 2 broken plugins x 2 hooks x 2 calls
    assert sum("'broken-first' raised in on_request" in m and "on_request exploded" in m for m in messages) == 2
    assert sum("'broken-last' raised in on_response" in m and "KeyError" in m for m in messages) == 2


def test_a_hook_may_take_fewer_arguments(plugins: Callable[[object, str], None]) -> None:
    seen: list[LLMResponse] = []

    class ResponsesOnly:
        @hookimpl
        def on_response(self, response: LLMResponse) -> None:
            seen.append(response)

    plugins(ResponsesOnly(), "responses-only")
    with scripted("ok"):
        response = generate_completion_sync("hi")
    assert len(seen) == 1 and seen[0] is response


def test_a_misbehaving_backend_is_observed_as_a_plugin_failure(plugins: Callable[[object, str], None]) -> None:
    class Garbage(ChatBackend):
        default_model = "garbage-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            return "a str, not a ChatResult"  # type: ignore[return-value]

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise ZeroDivisionError("a bug")

    class GarbagePlugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("garbage", Garbage)

    recorder = Recorder()
    plugins(GarbagePlugin(), "garbage-plugin")
    plugins(recorder, "recorder")
    sync = generate_completion_sync("hi", backend="garbage")
    async_ = asyncio.run(generate_completion_async("hi", backend="garbage"))
    assert [e[0] for e in recorder.events] == ["request", "response"] * 2
    assert [e[2] for e in recorder.events[1::2]] == [sync, async_]
    assert sync.error_kind == async_.error_kind == "plugin"


OBSERVER = """
from chatplug import hookimpl
seen = []
@hookimpl
def on_response(request, response):
    seen.append(str(response.error_kind))
"""


def test_an_installed_observer_sees_a_failure_before_plugins_loaded(tmp_path: Path) -> None:
    """Plugins load at the first dispatch; a first call that fails before it (bad input) must
    still reach the observers, which today it does not."""
    fake_distribution(tmp_path, "chatplug-observer", "observer", OBSERVER)
    proc = python(
        """
        import json, chatplug, chatplug_observer
        chatplug.generate_completion_sync("")
        chatplug.generate_completion_sync("hi", backend="testing")
        print(json.dumps(chatplug_observer.seen))
        """,
        tmp_path,
    )
    assert json.loads(proc.stdout) == ["invalid_input", "None"], proc.stderr


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example metrics plugin, imported from its source file as a fresh module under a name of
    its own: the same tests pass with chatplug-metrics pip-installed (its entry point, named
    "metrics", loads the installed module, which this one must not be mistaken for)."""
    spec = importlib.util.spec_from_file_location("chatplug_metrics_from_source", METRICS_PLUGIN / "__init__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_metrics_plugin_counts_concurrent_calls_exactly(
    plugins: Callable[[object, str], None], metrics: ModuleType
) -> None:
    plugins(metrics, "metrics-from-source")

    def reply(request: ChatRequest) -> str | chatplug.ChatplugError:
        n = int(request.messages[-1]["content"].split()[1])
        return RateLimitError("busy") if n % 10 == 0 else "two words"

    with scripted(default=reply), ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: generate_completion_sync(f"call {i}"), range(200)))
    generate_completion_sync("x", backend="nope")

    snap = metrics.snapshot()
    testing = snap["testing"]
    assert (testing["requests"], testing["responses"], testing["successes"]) == (200, 200, 180)
    assert testing["failures"] == {"rate_limit": 20}
    assert (testing["prompt_tokens"], testing["completion_tokens"]) == (360, 360)
    assert 0 < testing["latency_max_s"] <= testing["latency_total_s"]
    assert snap["-"]["failures"] == {"config": 1} and snap["-"]["requests"] == 0
    snap["testing"]["requests"] = -1  # a copy: changing it changes nothing
    assert metrics.snapshot()["testing"]["requests"] == 200
    metrics.reset()
    assert metrics.snapshot() == {}
