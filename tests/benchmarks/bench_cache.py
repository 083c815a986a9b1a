"""The cost of a response-cache hit against a loopback request, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_cache.py

A loopback HTTP server in this process answers Ollama's ``/api/chat`` with the recorded body,
at once or after 20 ms (the issue's loopback provider). Each row is the mean of N sequential
``generate_completion_sync`` calls (and ``generate_completion_async`` ones for Redis, on one
event loop) after a warm-up:

- ``request``: cache off, every call sent to the server;
- ``miss + store``: cache on, every prompt new: the lookup, the request and the store;
- ``hit``: cache on, the same prompt again: answered from SQLite (a file in a temporary folder)
  or from a real ``redis-server`` on a loopback port (``tests/redisserver.py``).

Target (issue 12): a hit costs under a tenth of a loopback request.

Then hits on the async path at concurrency 100 (issue 24: SQLite's I/O runs in a worker thread,
off the event loop), against ``bench_async``'s aiohttp server in its own process, answering at
once: ``generate_completion_async`` calls, 100 at a time, ``BENCH_ASYNC_N`` (3,000) per run,
on a fresh loop after a warm-up, the contenders taking turns for ``BENCH_ROUNDS`` (3) rounds:

- ``request, cache off``: every call sent to the server (the uncached call through the same path);
- ``SQLite hit``: answered from SQLite, the lookup in a worker thread;
- ``SQLite hit, lookup on the loop``: the same with the lookup done on the event loop, as before
  issue 24 (what the thread costs; a lookup that waits for a lock then blocks every call);
- ``Redis hit``: answered by redis' asyncio client.

Reported: hits (or requests) a second, the median of the rounds, and the median of each round's
ratio to the uncached call's rate in the same round.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import fixture
from tests.redisserver import RedisServer, redis_binary

import chatplug
import chatplug._pipeline.cache

N = int(os.environ.get("BENCH_N", "500"))
BODY = fixture("ollama/chat_nonstream_200.json")


def serve(delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if delay:
                time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    return server


def timed(call: Callable[[int], object], n: int = N) -> float:
    """Mean seconds per call of ``call(i)``, after a warm-up of 20."""
    for i in range(20):
        call(-1 - i)
    start = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - start) / n


def timed_async(call: Callable[[int], Any], n: int = N) -> float:
    async def run() -> float:
        for i in range(20):
            await call(-1 - i)
        start = time.perf_counter()
        for i in range(n):
            await call(i)
        return (time.perf_counter() - start) / n

    return asyncio.run(run())


def rows_for(place: str | None, label: str) -> list[tuple[str, float, str]]:
    if place is None:
        os.environ.pop("LLM_CACHE", None)
    else:
        os.environ["LLM_CACHE"] = place
    chatplug._pipeline.cache.close()
    rows = []
    counter = iter(range(10**9))

    def sync_miss(_: int) -> object:
        response = chatplug.generate_completion_sync(f"Why is the sky blue? {next(counter)} {label}")
        assert response.success and not response.cached, response.error
        return response

    def sync_hit(_: int) -> object:
        response = chatplug.generate_completion_sync("Why is the sky blue?")
        assert response.success and response.cached, response
        return response

    async def async_hit(_: int) -> object:
        response = await chatplug.generate_completion_async("Why is the sky blue?")
        assert response.success and response.cached, response
        return response

    if place is None:
        rows.append((f"request, cache off{label}", timed(sync_miss), ""))
        return rows
    rows.append((f"{kind(place)} miss + store{label}", timed(sync_miss, min(N, 200)), ""))
    chatplug.generate_completion_sync("Why is the sky blue?")
    rows.append((f"{kind(place)} hit", timed(sync_hit), ""))
    rows.append((f"{kind(place)} hit, async", timed_async(async_hit), ""))
    return rows


def kind(place: str) -> str:
    return "Redis" if place.startswith("redis://") else "SQLite"


ASYNC_N = int(os.environ.get("BENCH_ASYNC_N", "3000"))
ASYNC_CONCURRENCY = 100
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PROMPT = "Why is the sky blue?"


def async_contender(place: str | None, on_loop: bool = False) -> Callable[[], tuple[Any, Any]]:
    """``bench_async.run``'s factory: one ``generate_completion_async`` call of ``PROMPT`` with
    ``LLM_CACHE=place`` (a hit, stored beforehand), or with no cache (sent each time)."""

    def make() -> tuple[Any, Any]:
        if place is None:
            os.environ.pop("LLM_CACHE", None)
        else:
            os.environ["LLM_CACHE"] = place
        chatplug._pipeline.cache.close()
        saved = chatplug._pipeline.cache.SQLiteStore.aget
        if on_loop:  # the lookup as it was before issue 24: on the event loop

            async def inline(self: chatplug._pipeline.cache.Store, key: str) -> bytes | None:
                return self.get(key)

            chatplug._pipeline.cache.SQLiteStore.aget = inline  # type: ignore[method-assign]

        async def call() -> object:
            response = await chatplug.generate_completion_async(PROMPT)
            assert response.success and response.cached == (place is not None), response
            return response

        async def close() -> None:
            chatplug._pipeline.cache.SQLiteStore.aget = saved  # type: ignore[method-assign]
            chatplug._pipeline.cache.close()

        return call, close

    return make


def async_table(folder: Path, redis: RedisServer | None) -> None:
    """Hits at concurrency 100 on the async path, and an uncached call through the same path."""
    from tests.benchmarks.bench_async import CLIENT_CORES, PINNED, pin, run, start_server

    server, url = start_server(0.0)
    pin(0, CLIENT_CORES)
    os.environ["OLLAMA_HOST"] = url
    sqlite = str(folder / "async.db")
    contenders = {
        "request, cache off": async_contender(None),
        "SQLite hit": async_contender(sqlite),
        "SQLite hit, lookup on the loop": async_contender(sqlite, on_loop=True),
    }
    if redis is not None:
        contenders["Redis hit"] = async_contender(redis.url)
    try:
        for place in (sqlite, redis.url if redis else None):  # the entry each hit reads
            if place is not None:
                os.environ["LLM_CACHE"] = place
                chatplug._pipeline.cache.close()
                assert chatplug.generate_completion_sync(PROMPT).success
        runs: dict[str, list[dict[str, float]]] = {}
        for turn in range(ROUNDS):  # in turns, in both orders, so that drift hits them alike
            for name in contenders if turn % 2 == 0 else reversed(contenders):
                runs.setdefault(name, []).append(run(contenders[name], ASYNC_CONCURRENCY, ASYNC_N))
    finally:
        chatplug.close()
        server.communicate("")
    floor = runs["request, cache off"]
    where = "server on its own core, client on the other" if PINNED else "server and client unpinned"
    print(
        f"\nasync path, concurrency {ASYNC_CONCURRENCY}: {ASYNC_N} calls a run, median of {ROUNDS} rounds "
        f"(ollama backend; bench_async's aiohttp server answering at once, in its own process; {where})\n"
    )
    print(f"{'':34} {'calls/s':>9} {'vs cache off':>13} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/call':>12}")
    for name, results in runs.items():
        rps = statistics.median(r["rps"] for r in results)
        ratio = statistics.median(r["rps"] / f["rps"] for r, f in zip(results, floor, strict=True))
        p50, p99 = (statistics.median(r[k] for r in results) for k in ("p50", "p99"))
        cpu = statistics.median(r["cpu_us"] for r in results)
        print(f"{name:34} {rps:9,.0f} {ratio:12.2f}x {p50:7.1f} {p99:7.1f} {cpu:12,.0f}")


def main() -> None:
    os.environ["LLM_MAX_RETRIES"] = "0"
    folder = Path(tempfile.mkdtemp(prefix="chatplug-bench-"))
    binary = redis_binary()
    redis = RedisServer(binary, folder) if binary else None
    table: list[tuple[str, float]] = []
    try:
        for delay in (0.0, 0.020):
            server = serve(delay)
            os.environ["OLLAMA_HOST"] = f"http://127.0.0.1:{server.server_address[1]}"
            label = f" (+{delay * 1000:.0f} ms server)"
            table += [(name, seconds) for name, seconds, _ in rows_for(None, label)]
            if delay == 0.0:
                for place in (str(folder / "cache.db"), redis.url if redis else None):
                    if place is not None:
                        table += [(name, seconds) for name, seconds, _ in rows_for(place, label)]
            chatplug.close()
            server.shutdown()
            server.server_close()
    finally:
        chatplug._pipeline.cache.close()
        if redis is not None:
            redis.close()
    base = table[0][1]
    print(f"\nchatplug response cache, {N} sequential calls per row (ollama backend, loopback server)\n")
    print(f"{'':44} {'per call':>10} {'vs request':>11}")
    for name, seconds in table:
        print(f"{name:44} {seconds * 1e6:8.0f} us {seconds / base:10.3f}x")
    hits = [(name, seconds) for name, seconds in table if " hit" in name]
    verdict = all(seconds < base / 10 for _, seconds in hits)
    print(f"\ntarget: a hit < 1/10 of a loopback request ({base * 1e6 / 10:.0f} us): {'met' if verdict else 'NOT met'}")
    if redis is None:
        print("(no redis-server binary: the Redis rows were skipped)")
    redis = RedisServer(binary, folder) if binary else None
    try:
        async_table(folder, redis)
    finally:
        if redis is not None:
            redis.close()


if __name__ == "__main__":
    main()
