"""Async throughput of every built-in backend on its default (aiohttp) transport, outside the
default test run:

    .venv/bin/python tests/benchmarks/bench_async.py

A loopback aiohttp server in its own process answers every chat request with the recorded wire
body after 20 ms (a model that answers at once would measure nothing but the server). For each
backend (ollama, openai, anthropic, local) and concurrency (100 and 1,000), the same number of
requests goes out through:

- ``sdk default``: the raw SDK's async client on its own transport (httpx / httpx2); for local,
  the raw ``httpx.AsyncClient`` its async path uses;
- ``sdk aiohttp``: the same raw client on the same aiohttp transport chatplug uses
  (``chatplug.toolkit.async_transport_options``);
- ``sdk DefaultAioHttpClient``: openai and anthropic only, the SDK's own aiohttp client;
- ``chatplug``: ``generate_completion_with_messages_async`` with its defaults (aiohttp);
- ``chatplug default``: the same with ``LLM_ASYNC_TRANSPORT=default``.

Reported: requests a second (wall clock), the client's CPU per request (``time.process_time``
deltas: this process only, the server runs in its own), and p50/p99 latency per request, each the
median of ``BENCH_ROUNDS`` (5) rounds in which the contenders take turns (in one order, then
the other); the ratios are the medians of each round's ratio. Each run is in a
process of its own (the environment set as below), on a fresh event loop, after a warm-up round
that opens its connections.
The server's ceiling is measured first with a bare ``aiohttp.ClientSession`` at the same 20 ms.

Every client gets 600 s per request (httpx's pool at 1,000 waiters can take minutes).

Targets (issue 13): chatplug >= 0.95x the raw SDK on the same transport; ollama >= 4x and
openai/anthropic >= 1.5x the raw SDK's default client.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import fixture

DELAY = 0.020
CONCURRENCY = tuple(int(n) for n in os.environ.get("BENCH_CONCURRENCY", "100,1000").split(","))
REQUESTS = {100: 3000, 1000: 3000}
#: Rounds per contender (medians reported): single runs on shared cores vary by up to 30%.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BACKENDS = os.environ.get("BENCH_BACKENDS", "ollama,openai,anthropic,local").split(",")
#: The contenders run (all by default); ``BENCH_CONTENDERS="sdk aiohttp,chatplug"`` leaves out the
#: slow default clients (minutes a run at 1,000) when only the ratio to the same transport is wanted.
CONTENDERS = [name for name in os.environ.get("BENCH_CONTENDERS", "").split(",") if name]
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
OLLAMA_OPTIONS = {"temperature": 0.7, "num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}
OPENAI_REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.7, "max_tokens": 500}
ANTHROPIC_REQUEST = {"model": "claude-sonnet-5-5", "messages": MESSAGES, "max_tokens": 500}
LOCAL_BODY = {"messages": MESSAGES, "temperature": 0.7, "max_tokens": 500}

Call = Callable[[], Awaitable[object]]
#: Makes, on the running loop, the function one request calls (and what to close afterwards).
Factory = Callable[[], tuple[Call, Callable[[], Awaitable[object]]]]


def more_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


# -- the server -------------------------------------------------------------------------


def serve() -> None:
    """An aiohttp server on a loopback port: each chat endpoint's recorded body after DELAY."""
    from aiohttp import web

    more_files()
    delay = float(sys.argv[2])
    bodies = {
        "/api/chat": fixture("ollama/chat_nonstream_200.json"),
        "/v1/chat/completions": fixture("openai/chat_nonstream_200.json"),
        "/v1/messages": fixture("anthropic/messages_nonstream_200.json"),
        # bench_gemini.py's: Gemini's reply as recorded (fixtures/gemini/INDEX.md).
        "/v1beta/models/gemini-3.8-flash:generateContent": fixture("gemini/generate_200.json"),
    }
    types = {path: "application/json; charset=UTF-8" if "gemini" in path else "application/json" for path in bodies}

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=bodies[request.path], headers={"Content-Type": types[request.path]})

    async def main() -> None:
        app = web.Application()
        for path in bodies:
            app.router.add_post(path, answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


def start_server(delay: float = DELAY) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pin(server.pid, SERVER_CORES)
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


#: Which cores the server and the clients run on (``BENCH_PIN=0``: wherever the kernel puts them).
#: Left to the kernel on 2 cores, a client now and then shared a core with the server for a whole
#: run, and ran 30% slower than the next.
_CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
PINNED = os.environ.get("BENCH_PIN", "1") != "0" and len(_CORES) >= 2
SERVER_CORES, CLIENT_CORES = set(_CORES[-1:]), set(_CORES[:-1])


def pin(pid: int, cores: set[int]) -> None:
    if PINNED:
        os.sched_setaffinity(pid, cores)


# -- the client ---------------------------------------------------------------------------


def run(factory: Factory, concurrency: int, total: int) -> dict[str, float]:
    """``total`` requests, ``concurrency`` at a time, on a fresh loop: req/s, CPU us/request, p50/p99 ms."""

    async def main() -> dict[str, float]:
        call, close = factory()
        try:
            await asyncio.gather(*(call() for _ in range(concurrency)))  # warm up: connections, first dispatch
            latencies: list[float] = []
            per_worker = total // concurrency

            async def worker() -> None:
                for _ in range(per_worker):
                    t = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - t)

            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await close()
        latencies.sort()
        done = len(latencies)
        return {
            "rps": done / wall,
            "cpu_us": cpu / done * 1e6,
            "p50": statistics.median(latencies) * 1e3,
            "p99": latencies[min(done - 1, int(done * 0.99))] * 1e3,
        }

    return asyncio.run(main())


async def nothing() -> None:
    return None


FAILED: list[str] = []


def checked(response: Any) -> object:
    if not response.success:  # counted, not raised: httpx's pool at 1,000 waiters can take minutes
        FAILED.append(response.error or "")
    return response


def contenders(backend: str, url: str) -> dict[str, Factory]:
    import httpx

    import chatplug
    from chatplug.toolkit import async_transport_options

    def ours() -> tuple[Call, Callable[[], Awaitable[object]]]:
        if backend == "local":
            fake_local_model(url)  # again: chatplug.close() unloads it

        async def call() -> object:
            return checked(await chatplug.generate_completion_with_messages_async(MESSAGES, backend=backend))

        return call, nothing

    found: dict[str, Factory] = {}
    if backend == "ollama":
        import ollama

        def raw(aiohttp: bool) -> Factory:
            def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
                options = async_transport_options() if aiohttp else {}
                client = ollama.AsyncClient(host=url, timeout=600, **options)

                async def call() -> object:
                    return await client.chat(model="llama3.2", messages=MESSAGES, options=OLLAMA_OPTIONS, stream=False)

                return call, client.close

            return make

        found = {"sdk default": raw(False), "sdk aiohttp": raw(True)}
    elif backend in ("openai", "anthropic"):
        sdk: Any = __import__(backend)
        cls = sdk.AsyncOpenAI if backend == "openai" else sdk.AsyncAnthropic
        base = f"{url}/v1" if backend == "openai" else url
        key = "sk-bench" if backend == "openai" else "sk-ant-bench"
        request = OPENAI_REQUEST if backend == "openai" else ANTHROPIC_REQUEST

        def stainless(http_client: Callable[[], Any] | None) -> Factory:
            def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
                extra = {"http_client": http_client()} if http_client is not None else {}
                client = cls(api_key=key, base_url=base, timeout=600, max_retries=2, **extra)
                create = client.chat.completions.create if backend == "openai" else client.messages.create

                async def call() -> object:
                    return await create(**request)

                return call, client.close

            return make

        import httpx2

        def same_transport() -> Any:
            limits = sdk.DEFAULT_CONNECTION_LIMITS
            return sdk.DefaultAsyncHttpxClient(**async_transport_options(httpx2, limits=limits))

        found = {
            "sdk default": stainless(None),
            "sdk aiohttp": stainless(same_transport),
            "sdk DefaultAioHttpClient": stainless(sdk.DefaultAioHttpClient),
        }
    elif backend == "local":

        def raw_httpx(aiohttp: bool) -> Factory:
            def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
                limits = httpx.Limits(max_keepalive_connections=16)
                options = async_transport_options(httpx, limits=limits, trust_env=False) if aiohttp else {}
                client = httpx.AsyncClient(limits=limits, trust_env=False, **options)

                async def call() -> object:
                    response = await client.post(f"{url}/v1/chat/completions", json=LOCAL_BODY, timeout=600)
                    return response.json()

                return call, client.aclose

            return make

        found = {"sdk default": raw_httpx(False), "sdk aiohttp": raw_httpx(True)}
    found["chatplug"] = ours

    def ours_default() -> tuple[Call, Callable[[], Awaitable[object]]]:
        chatplug.close()  # new clients, made with the setting below
        chatplug.settings.async_transport = "default"
        call, _ = ours()

        async def close() -> None:
            chatplug.settings.async_transport = None
            chatplug.close()

        return call, close

    found["chatplug default"] = ours_default
    return found


#: What the ratios are to: the raw SDK's default client, and the raw SDK on chatplug's transport.
FLOORS = ("sdk default", "sdk aiohttp")


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    """Each measure's median over the rounds."""
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


def _ratio(runs: list[dict[str, float]], floor: list[dict[str, float]]) -> float:
    """The median over the rounds of each round's req/s ratio to ``floor``'s in the same round:
    the machine's speed drifts between rounds by more than the differences measured, and the two
    runs of one round are minutes apart at most."""
    return statistics.median(run["rps"] / other["rps"] for run, other in zip(runs, floor, strict=True))


def fake_local_model(url: str) -> None:
    """The local backend pointed at the bench server: its async path posts to ``model.url``."""
    from chatplug._plugins import plugins

    plugins().load()
    backend: Any = plugins().backends.get("local")
    model = type("BenchModel", (), {"name": "SmolLM2-135M-Instruct", "url": url})()
    backend._models["SmolLM2-135M-Instruct"] = model


def ceiling(url: str, concurrency: int, total: int) -> dict[str, float]:
    """The server's rate for a bare aiohttp session: what no client above it can beat."""
    import aiohttp

    body = fixture("ollama/chat_request.json")

    def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def call() -> object:
            async with session.post(f"{url}/api/chat", data=body) as response:
                return await response.read()

        return call, session.close

    return run(make, concurrency, total)


def run_apart(backend: str, name: str, concurrency: int, url: str) -> dict[str, float]:
    """One run of one contender, in a process of its own: a run in a process that other
    contenders' runs have used inherits their heap (more for the collector to walk, memory laid
    out by them), and the contenders run later paid for it (ollama's chatplug at 1,000 measured
    0.49x there, and 0.95-1.03x run apart, alternating with the raw SDK)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--one", backend, name, str(concurrency), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    *said, result = proc.stdout.strip().splitlines()
    for line in said:  # failures, counted in the child
        print(line, flush=True)
    return dict(json.loads(result))


def one(backend: str, name: str, concurrency: int, url: str) -> None:
    """The child of ``run_apart``: prints any failures, then the run's numbers as JSON."""
    more_files()
    pin(0, CLIENT_CORES)
    if backend == "local":
        fake_local_model(url)
    result = run(contenders(backend, url)[name], concurrency, REQUESTS.get(concurrency, concurrency * 6))
    if FAILED:
        print(f"{backend} {name} {concurrency}: {len(FAILED)} failed, e.g. {FAILED[0]}")
    print(json.dumps(result))


def environment(url: str) -> dict[str, str]:
    """The variables that point every backend (chatplug's and the raw SDKs') at the server at ``url``."""
    return {
        "OLLAMA_HOST": url, "OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "sk-bench", "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "sk-ant-bench", "LLM_MAX_RETRIES": "2", "LLM_TIMEOUT": "600",
    }  # fmt: skip


def main() -> None:
    import chatplug

    more_files()
    server, url = start_server()
    pin(0, CLIENT_CORES)  # and the children with it
    os.environ.update(environment(url))
    print(f"{os.cpu_count()} cores; server: aiohttp on 127.0.0.1 in its own process, +{DELAY * 1e3:.0f} ms per request")
    if PINNED:
        print(f"server on core {sorted(SERVER_CORES)}, clients on {sorted(CLIENT_CORES)}")
    for concurrency in CONCURRENCY:
        top = ceiling(url, concurrency, REQUESTS[concurrency])
        print(f"server ceiling at concurrency {concurrency} (bare aiohttp client): {top['rps']:.0f} req/s")
    print()
    print("| backend | client | concurrency | req/s | vs sdk default | vs sdk aiohttp | CPU us/req | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend in BACKENDS:
        if backend == "local":
            try:
                fake_local_model(url)
            except Exception as exc:  # xllamacpp missing
                print(f"| local | skipped ({exc}) |")
                continue
        for concurrency in CONCURRENCY:
            runs: dict[str, list[dict[str, float]]] = {}
            names = [name for name in contenders(backend, url) if not CONTENDERS or name in CONTENDERS]
            for turn in range(ROUNDS):  # the contenders take turns, so that drift hits them alike
                for name in names if turn % 2 == 0 else reversed(names):  # and in turn in both orders
                    runs.setdefault(name, []).append(run_apart(backend, name, concurrency, url))
            rows = {name: _median(results) for name, results in runs.items()}
            for name, row in rows.items():
                base, same = (f"{_ratio(runs[name], runs[floor]):.2f}x" if floor in runs else "-" for floor in FLOORS)
                print(
                    f"| {backend} | {name} | {concurrency:,} | {row['rps']:,.0f} | {base} | "
                    f"{same} | {row['cpu_us']:,.0f} | {row['p50']:.1f} | {row['p99']:.1f} |",
                    flush=True,
                )
    chatplug.close()
    server.communicate("")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve()
    elif sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
