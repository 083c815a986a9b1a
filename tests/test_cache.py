"""The response cache (``LLM_CACHE``): its key covers the whole request, failures are never
cached, a hit sends nothing and says so, entries expire, and SQLite and a real Redis are shared by
processes, counted at the loopback provider. A cache that fails never fails a call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chatplug
import chatplug._pipeline.cache as cache_module
from chatplug import (
    ChatRequest,
    ChatResult,
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_sync,
    stream_completion_async,
    stream_completion_sync,
)
from chatplug._core.tools import ResponseFormat, Tool
from chatplug._pipeline.cache import key
from chatplug.testing import scripted

from .childproc import python
from .conftest import Observed
from .fakeserver import FakeServer
from .redisserver import RedisServer, redis_server

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    yield
    cache_module.close()


@pytest.fixture
def sqlite_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache" / "responses.db"
    monkeypatch.setenv("LLM_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory)


@pytest.fixture
def redis_cache(redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> RedisServer:
    redis.flush()
    monkeypatch.setenv("LLM_CACHE", redis.url)
    return redis


CACHES = pytest.mark.parametrize("where", ["sqlite_cache", "redis_cache"])


@pytest.fixture
def observer(observed: Observed) -> Observed:
    return observed


# -- the key --------------------------------------------------------------------------------

BASE = ChatRequest(messages=({"role": "user", "content": "Hi"},), model="m", backend="b", options={"seed": 1})
TOOL = Tool("get_weather", "The weather.", {"type": "object", "properties": {"city": {"type": "string"}}})
FORMAT = ResponseFormat("Capital", {"type": "object", "properties": {"city": {"type": "string"}}})
VARIANTS: dict[str, dict[str, Any]] = {
    "backend": {"backend": "c"},
    "model": {"model": "n"},
    "message text": {"messages": ({"role": "user", "content": "Hi!"},)},
    "message role": {"messages": ({"role": "system", "content": "Hi"},)},
    "another message": {"messages": ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})},
    "temperature": {"temperature": 0.2},
    "max_tokens": {"max_tokens": 501},
    "option value": {"options": {"seed": 2}},
    "another option": {"options": {"seed": 1, "top_p": 0.5}},
    "tools": {"tools": (TOOL,)},
    "tool schema": {"tools": (Tool("get_weather", "The weather.", {"type": "object"}),)},
    "tool_choice": {"tools": (TOOL,), "tool_choice": "required"},
    "response_format": {"response_format": FORMAT},
    "response_format schema": {"response_format": ResponseFormat("Capital", {"type": "object"})},
}


def test_strict_mode_changes_the_key() -> None:
    with_tool = ChatRequest(**{**_fields(BASE), "tools": (TOOL,)})
    strict_tool = ChatRequest(**{**_fields(BASE), "tools": (dataclasses.replace(TOOL, strict=True),)})
    assert key(strict_tool) != key(with_tool)
    with_format = ChatRequest(**{**_fields(BASE), "response_format": FORMAT})
    strict_format = ChatRequest(**{**_fields(BASE), "response_format": dataclasses.replace(FORMAT, strict=True)})
    assert key(strict_format) != key(with_format)


@pytest.mark.parametrize("field", list(VARIANTS))
def test_changing_any_field_changes_the_key(field: str) -> None:
    changed = ChatRequest(**{**_fields(BASE), **VARIANTS[field]})
    assert key(changed) != key(BASE)


def test_the_key_ignores_what_does_not_make_the_reply() -> None:
    same = ChatRequest(**{**_fields(BASE), "timeout": 5.0, "deadline": 12.0, "max_retries": 3})
    reordered = ChatRequest(**{**_fields(BASE), "options": {"top_p": 0.5, "seed": 1}})
    assert key(same) == key(BASE)
    assert key(reordered) == key(ChatRequest(**{**_fields(BASE), "options": {"seed": 1, "top_p": 0.5}}))


def _fields(request: ChatRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "Hello?"},
        {"model_name": "other"},
        {"temperature": 0.1},
        {"max_tokens": 7},
        {"seed": 3},
        {"stop": ["x"]},
        {"backend_options": {"tools": [{"name": "t", "description": "d", "parameters": {"type": "object"}}]}},
        {"backend_options": {"response_format": {"type": "object", "properties": {"a": {"type": "string"}}}}},
    ],
    ids=["prompt", "model", "temperature", "max_tokens", "seed", "stop", "tools", "response_format"],
)
def test_a_call_that_differs_in_any_argument_misses(sqlite_cache: Path, change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"prompt": "Hi", "model_name": None, "temperature": 0.5, "max_tokens": 20, "seed": 1}
    changed = {**base, **change}
    extra = changed.pop("backend_options", {})
    reply = '{"a": "x"}'
    with scripted(default=lambda request: reply) as llm:
        assert generate_completion_sync(**base).success
        assert generate_completion_sync(**base).cached
        response = generate_completion_sync(**changed, **extra)
        assert response.success, response.error
        assert not response.cached
        assert generate_completion_sync(**changed, **extra).cached
    assert len(llm.requests) == 2


# -- hits -----------------------------------------------------------------------------------


@CACHES
def test_a_hit_sends_nothing_and_says_so(where: str, request: pytest.FixtureRequest, observer: Observed) -> None:
    request.getfixturevalue(where)
    reply = ChatResult("Paris", "m-1", 7, 2, "stop", reasoning="thought")
    with scripted(reply) as llm:
        first = generate_completion_sync("Capital of France?")
        second = generate_completion_sync("Capital of France?")
        third = asyncio.run(generate_completion_async("Capital of France?"))
    assert len(llm.requests) == 1 and len(observer.requests) == 1
    assert len(observer.responses) == 3  # on_response fires for a hit too
    assert not first.cached and first.attempts == 1
    for hit in (second, third):
        assert hit.cached and hit.success and hit.attempts == 0
        assert (hit.content, hit.model_used, hit.reasoning, hit.finish_reason) == ("Paris", "m-1", "thought", "stop")
        assert (hit.prompt_tokens, hit.completion_tokens, hit.tokens_used) == (7, 2, 9)
        assert hit.backend == "testing"
    assert observer.responses[1] is second and second.to_dict()["cached"] is True


def test_a_hit_keeps_tool_calls_and_structured_output(sqlite_cache: Path) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with scripted(chatplug.ToolCall("call_1", "get_weather", {"city": "Paris"}), '{"city": "Paris"}') as llm:
        tools = [{"name": "get_weather", "description": "Weather.", "parameters": {"type": "object"}}]
        first = generate_completion_sync("Weather?", tools=tools)
        hit = generate_completion_sync("Weather?", tools=tools)
        parsed = generate_completion_sync("Capital?", response_format=schema)
        parsed_hit = generate_completion_sync("Capital?", response_format=schema)
    assert len(llm.requests) == 2
    assert hit.cached and hit.finish_reason == "tool_calls"
    assert [c.to_dict() for c in hit.tool_calls] == [c.to_dict() for c in first.tool_calls]
    assert parsed_hit.cached and parsed_hit.parsed == parsed.parsed == {"city": "Paris"}


def test_cache_false_neither_reads_nor_writes(sqlite_cache: Path) -> None:
    with scripted("one", "two", "three") as llm:
        assert generate_completion_sync("Hi", cache=False).content == "one"
        assert generate_completion_sync("Hi").content == "two"  # nothing was stored by the first
        assert generate_completion_sync("Hi", cache=False).content == "three"  # not read
        hit = generate_completion_sync("Hi", cache=True)
    assert hit.cached and hit.content == "two"
    assert len(llm.requests) == 3


def test_cache_must_be_a_bool(sqlite_cache: Path) -> None:
    response = generate_completion_sync("Hi", backend="testing", cache="yes")
    assert response.error_kind == "invalid_input" and "cache" in str(response.error)


def test_the_cache_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with scripted("one", "two") as llm:
        generate_completion_sync("Hi")
        assert not generate_completion_sync("Hi").cached
    assert len(llm.requests) == 2 and not list(tmp_path.iterdir())


# -- failures ---------------------------------------------------------------------------------


@CACHES
def test_failures_are_never_cached(where: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(where)
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with scripted(chatplug.RateLimitError("slow down"), "answer", "not json", '{"city": "Paris"}') as llm:
        assert generate_completion_sync("Hi").error_kind == "rate_limit"
        assert generate_completion_sync("Hi").content == "answer"  # sent again: the failure was not kept
        assert generate_completion_sync("Hi").cached
        assert generate_completion_sync("Capital?", response_format=schema).error_kind == "invalid_output"
        assert generate_completion_sync("Capital?", response_format=schema).parsed == {"city": "Paris"}
        assert generate_completion_sync("Capital?", response_format=schema).cached
    assert len(llm.requests) == 4


def test_an_unusable_cache_never_fails_a_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LLM_CACHE", str(blocker / "cache.db"))  # under a file: cannot be made
    caplog.set_level(logging.WARNING, logger="chatplug")
    with scripted("one", "two", "three") as llm:
        responses = [generate_completion_sync("Hi") for _ in range(2)]
        responses.append(asyncio.run(generate_completion_async("Hi")))
    assert [r.content for r in responses] == ["one", "two", "three"]
    assert all(r.success and not r.cached for r in responses) and len(llm.requests) == 3
    warnings = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert len(warnings) == 1 and "uncached" in warnings[0], warnings


def test_a_redis_that_is_down_never_fails_a_call(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setenv("LLM_CACHE", f"redis://:s3cret-pw@127.0.0.1:{closed_port}/0")
    caplog.set_level(logging.WARNING, logger="chatplug")
    with scripted("one", "two") as llm:
        first = generate_completion_sync("Hi")
        second = asyncio.run(generate_completion_async("Hi"))
    assert (first.content, second.content) == ("one", "two") and len(llm.requests) == 2
    warnings = [r.getMessage() for r in caplog.records if "response cache" in r.getMessage()]
    assert len(warnings) == 1 and "Redis" in warnings[0]
    assert "s3cret-pw" not in caplog.text


def test_a_cache_that_works_again_is_used_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    blocker = tmp_path / "dir"
    blocker.write_text("")
    monkeypatch.setenv("LLM_CACHE", str(blocker / "cache.db"))
    monkeypatch.setattr(cache_module, "RETRY_SECONDS", 0.0)
    with scripted("one", "two") as llm:
        generate_completion_sync("Hi")
        blocker.unlink()  # now the folder can be made
        generate_completion_sync("Hi")
        assert generate_completion_sync("Hi").cached
    assert len(llm.requests) == 2


# -- expiry ---------------------------------------------------------------------------------


def test_sqlite_entries_expire_after_the_ttl(sqlite_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr(cache_module, "clock", lambda: now[0])
    monkeypatch.setenv("LLM_CACHE_TTL", "1")
    with scripted("one", "two") as llm:
        generate_completion_sync("Hi")
        now[0] = 1_000.99
        assert generate_completion_sync("Hi").cached
        now[0] = 1_001.0
        late = generate_completion_sync("Hi")
    assert not late.cached and late.content == "two" and len(llm.requests) == 2


def test_redis_entries_expire_after_the_ttl(redis_cache: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis as redis_client

    monkeypatch.setenv("LLM_CACHE_TTL", "0.2")
    with scripted("one", "two") as llm:
        generate_completion_sync("Hi")
        with redis_client.Redis.from_url(redis_cache.url) as client:
            (entry,) = client.keys(cache_module.REDIS_PREFIX + "*")
            assert 0 < client.pttl(entry) <= 200  # PEXPIRE'd by Redis itself
            deadline = time.monotonic() + 5
            while client.exists(entry):  # a condition with a deadline, not a sleep
                assert time.monotonic() < deadline, "the entry never expired"
                time.sleep(0.01)
        late = generate_completion_sync("Hi")
    assert not late.cached and late.content == "two" and len(llm.requests) == 2


def test_a_bad_ttl_is_a_config_error(sqlite_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CACHE_TTL", "soon")
    with scripted("one"):
        response = generate_completion_sync("Hi")
    assert response.error_kind == "config" and "LLM_CACHE_TTL" in str(response.error)


# -- streams --------------------------------------------------------------------------------


@CACHES
def test_a_stream_is_stored_whole_and_replayed_as_one_chunk(where: str, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue(where)
    with scripted(["The sky ", "is ", "blue."]) as llm:
        with stream_completion_sync("Why?") as stream:
            assert [c.text for c in stream] == ["The sky ", "is ", "blue."]
        with stream_completion_sync("Why?") as replay:
            assert [c.text for c in replay] == ["The sky is blue."]

        async def async_replay() -> tuple[list[str], LLMResponse]:
            async with stream_completion_async("Why?") as stream:
                return [c.text async for c in stream], stream.response

        texts, response = asyncio.run(async_replay())
        whole = generate_completion_sync("Why?")
    assert texts == ["The sky is blue."] and len(llm.requests) == 1
    for hit in (replay.response, response, whole):
        assert hit.cached and hit.attempts == 0 and hit.content == "The sky is blue."
        assert hit.tokens_used == stream.response.tokens_used
    assert not stream.response.cached


def test_a_stream_that_failed_or_stopped_is_not_stored(sqlite_cache: Path) -> None:
    with scripted(["Half", chatplug.ServerError("reset")], ["Whole ", "reply"], ["Again"]) as llm:
        with stream_completion_sync("Hi") as broken:
            list(broken)
        with stream_completion_sync("Hi") as stopped:
            for _ in stopped:
                break
        with stream_completion_sync("Hi") as whole:
            list(whole)
        assert generate_completion_sync("Hi").cached
    assert not broken.response.success and stopped.response.finish_reason == "cancelled"
    assert whole.response.content == "Again" and len(llm.requests) == 3


def test_a_whole_call_is_replayed_by_a_stream(sqlite_cache: Path) -> None:
    with scripted("Stored once") as llm:
        generate_completion_sync("Hi")
        with stream_completion_sync("Hi") as stream:
            chunks = list(stream)
    assert [c.text for c in chunks] == ["Stored once"] and stream.response.cached and len(llm.requests) == 1



def test_a_stream_replayed_from_the_cache_and_closed_early_is_cancelled(sqlite_cache: Path) -> None:
    """As any stream its caller stopped: the reply it had replayed is kept, cut short, not "stop"."""
    with scripted("Stored once") as llm:
        generate_completion_sync("Hi")
        for close in (lambda s: s.close(), lambda s: s.__exit__(None, None, None)):
            stream = stream_completion_sync("Hi")
            assert next(stream).text == "Stored once"
            close(stream)
            assert (stream.response.finish_reason, stream.response.cached) == ("cancelled", True)
    assert len(llm.requests) == 1

# -- shared by processes, counted at the loopback provider ----------------------------------------

CHILD = """
import json, sys
from chatplug import generate_completion_sync
responses = [generate_completion_sync(f"prompt {{i}}", max_tokens=16) for i in range({count})]
print(json.dumps([[r.success, r.cached, r.error] for r in responses]))
"""


def _children(ollama: FakeServer, place: str, *counts: int, together: bool = False) -> list[list[list[Any]]]:
    import subprocess
    import sys
    import textwrap

    env = {"OLLAMA_HOST": ollama.url, "LLM_CACHE": place, "LLM_MAX_RETRIES": "0"}
    if not together:
        runs = [python(CHILD.format(count=count), SRC, **env) for count in counts]
    else:
        from .childproc import clean_env

        procs = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(CHILD.format(count=count))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=clean_env(PYTHONPATH=str(SRC), **env),
            )
            for count in counts
        ]
        runs = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            runs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "failed" not in run.stderr, run.stderr  # no cache warning
    return [json.loads(run.stdout) for run in runs]


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_two_processes_share_one_cache(
    where: str, ollama: FakeServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    place = str(tmp_path / "shared.db") if where == "sqlite" else request.getfixturevalue("redis_cache").url
    first, second = _children(ollama, place, 5, 8)
    assert all(ok and not cached for ok, cached, _ in first), first
    assert [cached for _, cached, _ in second] == [True] * 5 + [False] * 3, second
    assert len(ollama.requests) == 8  # the second process sent only the 3 prompts the first had not


@pytest.mark.parametrize("where", ["sqlite", "redis"])
def test_two_processes_at_once_share_one_cache(
    where: str, ollama: FakeServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    place = str(tmp_path / "shared.db") if where == "sqlite" else request.getfixturevalue("redis_cache").url
    together = _children(ollama, place, 20, 20, together=True)
    assert all(ok for run in together for ok, _, _ in run), together
    hits = sum(cached for run in together for _, cached, _ in run)
    assert len(ollama.requests) == 40 - hits and 20 <= len(ollama.requests) <= 40
    (after,) = _children(ollama, place, 20)
    assert all(cached for _, cached, _ in after) and len(ollama.requests) == 40 - hits


def test_importing_chatplug_imports_neither_sqlite_nor_redis() -> None:
    run = python(
        "import sys, chatplug; print(sorted(m for m in ('sqlite3', 'redis', 'chatplug._pipeline.cache', "
        "'chatplug._pipeline.ratelimit') if m in sys.modules))",
        SRC,
        LLM_CACHE="/nonexistent/cache.db",
        LLM_RATE_LIMIT="*=10rpm",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_messages_calls_share_the_prompt_calls_entries(sqlite_cache: Path) -> None:
    with scripted("one") as llm:
        generate_completion_sync("Hi")
        hit = generate_completion_with_messages_sync([{"role": "user", "content": "Hi"}])
    assert hit.cached and len(llm.requests) == 1


def test_the_async_redis_clients_close_with_their_loop(redis_cache: RedisServer) -> None:
    # Several asyncio.run()s, each with its own client: none is left open (ResourceWarning is an error).
    with scripted("one") as llm:
        for _ in range(3):
            assert asyncio.run(generate_completion_async("Hi")).success
    assert len(llm.requests) == 1


# -- the endpoint: where the request goes is part of the key (issue 24) ---------------------------


def test_without_userinfo_drops_only_the_credentials_of_an_address() -> None:
    from chatplug._pipeline.cache import without_userinfo

    assert without_userinfo("http://alice:s3cret@10.0.0.1:8000/v1") == "http://10.0.0.1:8000/v1"
    assert without_userinfo("https://token@api.example/v1") == "https://api.example/v1"
    for kept in ("http://10.0.0.1:8000/v1", "http://h/v1?tag=a@b", "http://h/p@x", "/models/a@b.gguf", "local", ""):
        assert without_userinfo(kept) == kept


@pytest.mark.parametrize(
    ("backend", "url_env", "key_env", "first", "second"),
    [
        ("openai", "OPENAI_BASE_URL", "OPENAI_API_KEY", "http://127.0.0.1:8000/v1", "https://openrouter.ai/api/v1"),
        ("anthropic", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "http://127.0.0.1:8000", "https://api.anthropic.com"),
        ("ollama", "OLLAMA_HOST", "OLLAMA_API_KEY", "http://127.0.0.1:11434", "http://gpu-box:11434"),
    ],
)
def test_the_key_holds_the_base_url_never_the_api_key(
    backend: str, url_env: str, key_env: str, first: str, second: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatplug._plugins import plugins

    manager = plugins()
    manager.load()
    made = manager.backends.get(backend)
    request = ChatRequest(**{**_fields(BASE), "backend": backend})

    def key_with(url: str, api_key: str) -> str:
        monkeypatch.setenv(url_env, url)
        monkeypatch.setenv(key_env, api_key)
        return key(request, made.endpoint(request))

    assert key_with(first, "sk-one") != key_with(second, "sk-one")
    assert key_with(first, "sk-one") == key_with(first, "sk-two")  # who asks does not change the reply
    with_userinfo = first.replace("://", "://alice:pw-s3cret@")
    assert key_with(with_userinfo, "sk-one") == key_with(first, "sk-one")
    assert key(request, endpoint=first) == key_with(first, "sk-one")


def test_the_ollama_host_without_a_scheme_is_the_same_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatplug.backends.ollama import OllamaBackend

    request = ChatRequest(**{**_fields(BASE), "backend": "ollama"})
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434")
    assert OllamaBackend().endpoint(request) == "http://gpu-box:11434"
    monkeypatch.setenv("OLLAMA_HOST", "alice:s3cret@gpu-box:11434")  # the SDK drops the userinfo, as the key does
    assert key(request, OllamaBackend().endpoint(request)) == key(request, "http://gpu-box:11434")
    monkeypatch.delenv("OLLAMA_HOST")
    assert OllamaBackend().endpoint(request) == "http://127.0.0.1:11434"  # the default host


def test_the_local_backend_keys_on_the_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xllamacpp")
    from chatplug.backends.local import DEFAULT_MODEL, LocalBackend

    local = LocalBackend()
    try:
        request = ChatRequest(**{**_fields(BASE), "backend": "local", "model": "model.gguf"})
        here, there = tmp_path / "a", tmp_path / "b"
        here.mkdir()
        there.mkdir()
        monkeypatch.chdir(here)
        assert local.endpoint(request) == str(here / "model.gguf")
        monkeypatch.chdir(there)
        assert local.endpoint(request) == str(there / "model.gguf")  # the same name, another file
        default = ChatRequest(**{**_fields(BASE), "backend": "local", "model": DEFAULT_MODEL})
        assert local.endpoint(default) == "local"
    finally:
        local.close()


def test_a_plugin_that_says_no_endpoint_shares_one_set_of_entries() -> None:
    class Quiet(chatplug.ChatBackend):
        def complete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            raise NotImplementedError

    assert Quiet().endpoint(BASE) == ""
    assert key(BASE) == key(BASE, endpoint="")


def _ask(prompt: str, mode: str) -> LLMResponse:
    if mode == "sync":
        return generate_completion_sync(prompt, model_name="same-model")
    return asyncio.run(generate_completion_async(prompt, model_name="same-model"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_two_openai_compatible_servers_with_one_model_name_never_share_entries(
    mode: str, openai_server: FakeServer, sqlite_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .providers import OPENAI

    staging, production = openai_server, FakeServer()
    try:
        OPENAI.route(production, OPENAI.reply(OPENAI.success))
        secret = "sk-test-N0T-IN-THE-CACHE-4f2a"
        monkeypatch.setenv("OPENAI_API_KEY", secret)
        first = _ask("Hi", mode)  # OPENAI_BASE_URL: staging (the fixture's)
        monkeypatch.setenv("OPENAI_BASE_URL", production.url + "/v1")
        second = _ask("Hi", mode)
        monkeypatch.setenv("OPENAI_BASE_URL", staging.url + "/v1")
        again = _ask("Hi", mode)
    finally:
        chatplug.close()
        production.close()
    assert first.success and second.success, (first.error, second.error)
    assert not first.cached and not second.cached  # the second server was asked, not answered for
    assert [len(staging.requests), len(production.requests)] == [1, 1]
    assert production.requests[0].json()["model"] == "same-model"
    assert again.cached and again.content == first.content  # a repeat to the first is a hit
    files = list(sqlite_cache.parent.iterdir())  # the database, its WAL and shared memory
    assert files and not any(secret.encode() in path.read_bytes() for path in files)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_two_ollama_hosts_with_one_model_name_never_share_entries(
    mode: str, ollama: FakeServer, sqlite_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import ollama_reply

    other = FakeServer()
    try:
        other.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
        first = _ask("Hi", mode)
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{other.port}")  # the SDK takes a host without a scheme
        second = _ask("Hi", mode)
        monkeypatch.setenv("OLLAMA_HOST", ollama.url)
        again = _ask("Hi", mode)
    finally:
        chatplug.close()
        other.close()
    assert first.success and second.success, (first.error, second.error)
    assert not first.cached and not second.cached
    assert [len(ollama.requests), len(other.requests)] == [1, 1]
    assert again.cached


# -- SQLite off the event loop -----------------------------------------------------------------


def test_an_async_store_waits_for_a_locked_database_off_the_event_loop(
    sqlite_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    import sqlite3
    import threading

    caplog.set_level(logging.WARNING, logger="chatplug")
    monkeypatch.setenv("LLM_CACHE_TTL", "3600")  # the store reads the clock just before it writes
    with scripted(default=lambda request: "fresh") as llm:
        assert generate_completion_sync("Stored before").success  # the database exists, with an entry
        storing = threading.Event()
        clock = cache_module.clock

        def signalling_clock() -> float:
            storing.set()
            return clock()

        monkeypatch.setattr(cache_module, "clock", signalling_clock)
        holder = sqlite3.connect(sqlite_cache, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another connection holds the write lock

        async def main() -> tuple[LLMResponse, LLMResponse, bool]:
            call = asyncio.create_task(generate_completion_async("New prompt"))
            await asyncio.to_thread(storing.wait, 30)  # the call's store has begun, and waits for the lock
            other = await generate_completion_async("Stored before")  # a read: WAL lets it through
            waiting = not call.done()
            holder.execute("COMMIT")
            return await call, other, waiting

        try:
            response, other, waiting = asyncio.run(main())
        finally:
            holder.close()
        assert other.cached and waiting  # the loop ran another call to its end while this one waited
        assert response.success and not response.cached
        assert generate_completion_sync("New prompt").cached  # stored once the lock was released
    assert len(llm.requests) == 2
    assert not [r for r in caplog.records if "response cache" in r.getMessage()]  # no failure


def test_an_async_lookup_waits_for_a_locked_database_off_the_event_loop(sqlite_cache: Path, caplog: Any) -> None:
    import sqlite3

    caplog.set_level(logging.WARNING, logger="chatplug")
    with scripted(default=lambda request: "answer") as llm:
        assert generate_completion_sync("Stored before").success
        store = cache_module.cache_for(str(sqlite_cache))._store
        assert store is not None
        store.close()  # no connection of chatplug's open (the store is kept): the holder can lock out readers
        holder = sqlite3.connect(sqlite_cache, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")

        async def main() -> tuple[LLMResponse, LLMResponse, bool]:
            call = asyncio.create_task(generate_completion_async("Stored before"))
            await asyncio.sleep(0)  # one turn of the loop: the call goes as far as its lookup
            other = await generate_completion_async("Not cached", cache=False)
            waiting = not call.done()
            holder.close()  # releases the lock
            return await call, other, waiting

        try:
            hit, other, waiting = asyncio.run(main())
        finally:
            holder.close()
    assert other.success and waiting  # the loop ran another call to its end while this one waited
    assert hit.cached and len(llm.requests) == 2
    assert not [r for r in caplog.records if "response cache" in r.getMessage()]
