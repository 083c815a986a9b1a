"""Client-side rate limits (``LLM_RATE_LIMIT``): the grammar, the local limiter's waits (read
from the limiter on a fake clock, not the wall), the deadline, the real usage replacing the
estimate, and a real Redis sharing one limit between two processes, counted at the loopback
provider."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chatplug
import chatplug._pipeline.cache
import chatplug._pipeline.ratelimit as ratelimit
from chatplug import ChatResult, generate_completion_async, generate_completion_sync, settings, stream_completion_sync
from chatplug._core.settings import _rate_limits
from chatplug.testing import scripted

from .childproc import clean_env
from .fakeserver import FakeServer
from .redisserver import RedisServer, redis_server

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeClock:
    """The limiter's clock, and its sleeps: a sleep moves the clock on, and is recorded."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture(autouse=True)
def fresh_limits() -> Iterator[None]:
    ratelimit.reset()
    yield
    ratelimit.reset()
    chatplug._pipeline.cache.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "clock", fake)
    monkeypatch.setattr(ratelimit, "sleep", fake.sleep)
    monkeypatch.setattr(ratelimit, "asleep", fake.asleep)
    return fake


# -- the grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("openai=500rpm", (("openai", 500.0, None),)),
        ("openai=500rpm/200000tpm", (("openai", 500.0, 200000.0),)),
        (" openai = 200_000 TPM / 500 rpm , anthropic=50rpm,*=1000rpm ",
         (("openai", 500.0, 200000.0), ("anthropic", 50.0, None), ("*", 1000.0, None))),
        ("local=0.5rpm", (("local", 0.5, None),)),
    ],
)  # fmt: skip
def test_the_grammar(text: str, parsed: Any) -> None:
    assert _rate_limits(text) == parsed


@pytest.mark.parametrize(
    "text",
    ["openai", "openai=", "=5rpm", "openai=5", "openai=5rps", "openai=-5rpm", "openai=0rpm", "openai=5rpm/6rpm",
     "openai=5rpm,openai=6rpm", "openai=fast", "openai=infrpm", "openai=5rpm,,", "openai=5rpm//6tpm"],
)  # fmt: skip
def test_a_malformed_limit_is_a_config_error_naming_the_variable(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _rate_limits(text) is None
    monkeypatch.setenv("LLM_RATE_LIMIT", text)
    with scripted("never") as llm:
        response = generate_completion_sync("Hi")
    assert response.error_kind == "config" and "LLM_RATE_LIMIT" in str(response.error)
    assert not llm.requests


def test_settings_take_the_same_text() -> None:
    settings.rate_limit = "testing=2rpm"
    assert settings.rate_limit == (("testing", 2.0, None),)
    with pytest.raises(chatplug.ConfigError, match=r"settings\.rate_limit"):
        settings.rate_limit = "testing=lots"
    settings.rate_limit = None


def test_a_backend_without_its_own_entry_takes_stars() -> None:
    table = (("openai", 5.0, None), ("*", 10.0, 100.0))
    assert ratelimit.limits_for(table, "openai") == (5.0, None)
    assert ratelimit.limits_for(table, "ollama") == (10.0, 100.0)
    assert ratelimit.limits_for((("openai", 5.0, None),), "ollama") is None


# -- the local limiter --------------------------------------------------------------------------


def test_the_limiter_computes_the_wait_of_each_request(clock: FakeClock) -> None:
    limiter = ratelimit.LocalLimiter()
    waits = []
    for _ in range(5):
        wait, ticket = limiter.acquire("b", 2, None, 0, max_wait=1_000)
        assert ticket is not None
        waits.append(wait)
    assert waits == [0, 0, 60, 60, 120]  # two a minute; each later one behind the one before it
    clock.now += 60
    assert limiter.acquire("b", 2, None, 0, max_wait=1_000)[0] == 60  # behind the queue, not before it
    assert limiter.acquire("other", 2, None, 0, max_wait=0)[0] == 0  # each backend its own log


def test_a_wait_past_max_wait_takes_no_place(clock: FakeClock) -> None:
    limiter = ratelimit.LocalLimiter()
    limiter.acquire("b", 1, None, 0, max_wait=0)
    wait, ticket = limiter.acquire("b", 1, None, 0, max_wait=10)
    assert (wait, ticket) == (60, None)
    clock.now += 60
    assert limiter.acquire("b", 1, None, 0, max_wait=0)[0] == 0  # the refused one left no trace


def test_tokens_per_minute_and_the_real_usage(clock: FakeClock) -> None:
    limiter = ratelimit.LocalLimiter()
    wait, first = limiter.acquire("b", None, 100, 60, max_wait=1_000)
    assert wait == 0 and first is not None
    assert limiter.acquire("b", None, 100, 60, max_wait=0)[1] is None  # 60 + 60 > 100: must wait
    first.settle(10)  # the reply said 10 tokens, not 60
    wait, second = limiter.acquire("b", None, 100, 60, max_wait=0)
    assert wait == 0 and second is not None
    assert limiter.acquire("b", None, 100, 60, max_wait=1_000)[0] == 60


def test_a_request_larger_than_a_minute_waits_for_an_empty_window(clock: FakeClock) -> None:
    limiter = ratelimit.LocalLimiter()
    assert limiter.acquire("b", None, 100, 10, max_wait=0)[0] == 0
    assert limiter.acquire("b", None, 100, 1_000, max_wait=1_000)[0] == 60


def test_the_local_limiter_is_thread_safe() -> None:
    limiter = ratelimit.LocalLimiter()
    taken: list[float] = []

    def take() -> None:
        for _ in range(50):
            wait, ticket = limiter.acquire("b", 100, None, 0, max_wait=0)
            if ticket is not None:
                taken.append(wait)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 100  # exactly the limit, out of 400 asks


# -- through the pipeline -----------------------------------------------------------------------


CALLS = pytest.mark.parametrize(
    "call",
    [generate_completion_sync, lambda *a, **k: asyncio.run(generate_completion_async(*a, **k))],
    ids=["sync", "async"],
)


@CALLS
def test_the_third_call_waits_for_room(call: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=2rpm,*=1rpm")
    with scripted() as llm:
        responses = [call("Hi", timeout=200) for _ in range(3)]
    assert all(r.success for r in responses) and len(llm.requests) == 3
    assert clock.sleeps == [60]  # the third waited a minute; the first two not at all


@CALLS
def test_a_wait_past_the_deadline_fails_at_once(call: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=1rpm")
    with scripted() as llm:
        assert call("Hi").success
        started = time.monotonic()
        late = call("Hi", timeout=5)
    assert time.monotonic() - started < 1
    assert late.error_kind == "rate_limit" and late.retry_after == 60 and late.attempts == 0
    assert "LLM_RATE_LIMIT" in str(late.error) and late.backend == "testing"
    assert len(llm.requests) == 1 and clock.sleeps == []  # nothing sent, nothing slept


def test_the_real_usage_replaces_the_estimate(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=100tpm")
    reply = ChatResult("ok", "m", 2, 1, "stop")
    with scripted(reply, reply, reply) as llm:
        # Each is estimated at 60 tokens (max_tokens 60 + 4 characters / 4), and used 3.
        for _ in range(3):
            assert generate_completion_sync("Hi!!", max_tokens=59).success
    assert len(llm.requests) == 3 and clock.sleeps == []


def test_a_backend_without_a_limit_is_not_limited(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "openai=1rpm")
    with scripted() as llm:
        for _ in range(5):
            assert generate_completion_sync("Hi", timeout=1).success
    assert len(llm.requests) == 5 and clock.sleeps == []


def test_streams_and_retries_wait_too(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=1rpm")
    monkeypatch.setattr("chatplug._pipeline.retry.BACKOFF_BASE", 0.001)
    with (
        scripted(chatplug.ServerError("oops"), "ok", retries=1) as llm,
        stream_completion_sync("Hi", timeout=100) as stream,
    ):
        assert [c.text for c in stream] == ["ok"]
    assert stream.response.attempts == 2 and len(llm.requests) == 2
    assert len(clock.sleeps) == 1 and 59.9 < clock.sleeps[0] <= 60  # the retry waited for its turn


def test_a_cache_hit_takes_no_place_in_the_limit(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=1rpm")
    monkeypatch.setenv("LLM_CACHE", str(tmp_path / "c.db"))
    with scripted() as llm:
        for _ in range(3):
            assert generate_completion_sync("Hi", timeout=5).success
    assert len(llm.requests) == 1 and clock.sleeps == []


# -- shared through Redis -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from redis_server(tmp_path_factory)


@pytest.fixture
def fresh_redis(redis: RedisServer) -> RedisServer:
    redis.flush()
    return redis


def test_the_redis_limiter_computes_the_same_waits(fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    limiter = ratelimit.RedisLimiter(fresh_redis.url)
    waits = [limiter.acquire("b", 2, None, 0, max_wait=1_000)[0] for _ in range(4)]
    assert waits[:2] == [0, 0] and all(59.9 < w <= 60 for w in waits[2:])
    wait, ticket = limiter.acquire("b", 2, None, 0, max_wait=10)
    assert ticket is None and 119.9 < wait <= 120
    # tokens, and the real usage
    wait, first = limiter.acquire("t", None, 100, 60, max_wait=0)
    assert wait == 0 and first is not None
    assert limiter.acquire("t", None, 100, 60, max_wait=0)[1] is None
    first.settle(10)
    assert limiter.acquire("t", None, 100, 60, max_wait=0)[0] == 0


def test_the_redis_limiter_async(fresh_redis: RedisServer) -> None:
    limiter = ratelimit.RedisLimiter(fresh_redis.url)

    async def main() -> list[float]:
        waits = [(await limiter.aacquire("b", 1, 100, 50, max_wait=1_000))[0] for _ in range(2)]
        _, ticket = await limiter.aacquire("c", None, 100, 60, max_wait=0)
        assert ticket is not None
        await ticket.asettle(5)
        waits.append((await limiter.aacquire("c", None, 100, 60, max_wait=0))[0])
        return waits

    waits = asyncio.run(main())
    assert waits[0] == 0 and 59.9 < waits[1] <= 60 and waits[2] == 0


def test_a_redis_cache_url_shares_the_limit(fresh_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=1rpm")
    monkeypatch.setenv("LLM_CACHE", fresh_redis.url)
    assert isinstance(ratelimit.limiter(), ratelimit.RedisLimiter)
    with scripted() as llm:
        assert generate_completion_sync("one", timeout=5).success
        ratelimit.local.reset()  # the limit is in Redis, not in this process
        late = generate_completion_sync("two", timeout=5)
    assert late.error_kind == "rate_limit" and len(llm.requests) == 1
    monkeypatch.delenv("LLM_CACHE")
    monkeypatch.setenv("LLM_RATE_LIMIT_REDIS", fresh_redis.url)
    assert isinstance(ratelimit.limiter(), ratelimit.RedisLimiter)


def test_a_redis_that_is_down_falls_back_on_the_local_limit(
    closed_port: int, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=1rpm")
    monkeypatch.setenv("LLM_RATE_LIMIT_REDIS", f"redis://127.0.0.1:{closed_port}/0")
    with scripted() as llm:
        assert generate_completion_sync("one", timeout=5).success
        late = generate_completion_sync("two", timeout=5)
    assert late.error_kind == "rate_limit" and len(llm.requests) == 1
    assert len([r for r in caplog.records if "rate limit Redis" in r.getMessage()]) == 1


class Timed(list[Any]):
    """The fake server's request log, with when each request arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.monotonic())
        super().append(item)


CHILD = """
import json, os
import chatplug._pipeline.ratelimit
chatplug._pipeline.ratelimit.WINDOW = {window}
from chatplug import generate_completion_sync
limit = os.environ.pop("LLM_RATE_LIMIT")
generate_completion_sync("warm-up", max_tokens=16, timeout=30)  # the HTTP client made, outside the limit
os.environ["LLM_RATE_LIMIT"] = limit
responses = [generate_completion_sync(f"prompt {{i}}", max_tokens=16, timeout=30) for i in range({count})]
print(json.dumps([[r.success, r.error] for r in responses]))
"""


def test_two_processes_stay_under_one_shared_limit(fresh_redis: RedisServer, ollama: FakeServer) -> None:
    # A window of 2 s (both processes agree on it), 4 requests in it: 12 requests take >= 4 s.
    ollama.requests = Timed()
    env = {"OLLAMA_HOST": ollama.url, "LLM_RATE_LIMIT": "ollama=4rpm", "LLM_RATE_LIMIT_REDIS": fresh_redis.url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD.format(window=2.0, count=6))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(PYTHONPATH=str(SRC), **env),
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert all(ok for ok, _ in json.loads(out)), out
    times = [t for t, r in zip(ollama.requests.times, ollama.requests, strict=True) if b"warm-up" not in r.body]
    assert len(times) == 12
    # In any 1.6 s (the window less the time a request may take to travel, on a busy machine), at most 4 arrived.
    most = max(sum(1 for t in times if start <= t < start + 1.6) for start in times)
    assert most <= 4, [round(t - times[0], 3) for t in times]
    assert times[-1] - times[0] >= 3.9  # 12 at 4 a window: two whole windows at least


def test_without_redis_each_process_has_its_own_limit(ollama: FakeServer) -> None:
    ollama.requests = Timed()
    env = {"OLLAMA_HOST": ollama.url, "LLM_RATE_LIMIT": "ollama=4rpm"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD.format(window=60.0, count=4))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(PYTHONPATH=str(SRC), **env),
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and all(ok for ok, _ in json.loads(out)), err
    assert len(ollama.requests) == 10  # 4 each and a warm-up: the limits did not add up


def test_a_rate_limit_redis_that_is_no_redis_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RATE_LIMIT", "testing=10rpm")
    monkeypatch.setenv("LLM_RATE_LIMIT_REDIS", "/tmp/not-a-url")
    with scripted() as llm:
        response = generate_completion_sync("Hi")
    assert response.error_kind == "config" and "LLM_RATE_LIMIT_REDIS" in str(response.error)
    assert not llm.requests
