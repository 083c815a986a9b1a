"""Async throughput of the ``gemini`` backend at concurrency 100, as ``bench_async.py`` measures
the other backends, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_gemini.py

``bench_async.py``'s loopback aiohttp server, in its own process, answers ``POST
/v1beta/models/{model}:generateContent`` with the recorded reply (``fixtures/gemini/generate_200.json``)
after 20 ms. The same number of
requests goes out through:

- ``sdk default``: a raw ``google.genai.Client`` (``api_version="v1beta"``), reused, with
  ``client.aio.models.generate_content``: on the SDK's default async transport, which is aiohttp
  whenever aiohttp is installed (google-genai 3.x, ``BaseApiClient._use_aiohttp``: an
  ``aiohttp.ClientSession`` per event loop, its connector unlimited), as it is here;
- ``sdk aiohttp``: the same raw client on the HTTP client chatplug's backend gives the SDK, an
  ``httpx2.AsyncClient`` on chatplug's aiohttp transport (``async_transport_options(httpx2)``);
- ``chatplug``: ``generate_completion_with_messages_async(..., backend="gemini")`` with its
  defaults (the same body: ``temperature`` 0.7, ``maxOutputTokens`` 500);
- ``chatplug default``: the same with ``LLM_ASYNC_TRANSPORT=default`` (httpx2's own transport).

The raw client is called as a user would call it, automatic function calling left on (the SDK's
default: it sends nothing, but deep-copies the config on every async call), which chatplug's
backend turns off.

Reported as ``bench_async.py`` reports: requests a second, the client's CPU per request, p50/p99
latency, each the median of ``BENCH_ROUNDS`` (5) rounds in which the contenders take turns (in
one order, then the other), every run in a process of its own on the client core; the ratios are
the medians of each round's ratio. The server's ceiling is measured first with a bare
``aiohttp.ClientSession`` posting the same body.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_async import (
    CLIENT_CORES,
    DELAY,
    FAILED,
    FLOORS,
    PINNED,
    ROUNDS,
    SERVER_CORES,
    Call,
    Factory,
    _median,
    _ratio,
    checked,
    environment,
    more_files,
    nothing,
    pin,
    run,
    start_server,
)
from tests.benchmarks.bench_providers import GEMINI_MODEL, GEMINI_PATH, GEMINI_REQUEST, MESSAGES

CONCURRENCY = 100
REQUESTS = 3000
KEY = "gemini-bench"


def contenders(url: str) -> dict[str, Factory]:
    import httpx2
    from google import genai

    import chatplug
    from chatplug.toolkit import async_transport_options

    def raw(same_transport: bool) -> Factory:
        def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
            http = httpx2.AsyncClient(timeout=600, **async_transport_options(httpx2)) if same_transport else None
            options = genai.types.HttpOptions(
                base_url=url, api_version="v1beta", timeout=600_000, httpx_async_client=http
            )
            client = genai.Client(api_key=KEY, http_options=options)

            async def call() -> object:
                return await client.aio.models.generate_content(**GEMINI_REQUEST)

            async def close() -> None:
                await client.aio.aclose()  # the SDK's own session; not a client it was given
                if http is not None:
                    await http.aclose()

            return call, close

        return make

    async def ours_call() -> object:
        return checked(await chatplug.generate_completion_with_messages_async(MESSAGES, GEMINI_MODEL, backend="gemini"))

    def ours() -> tuple[Call, Callable[[], Awaitable[object]]]:
        return ours_call, nothing

    def ours_default() -> tuple[Call, Callable[[], Awaitable[object]]]:
        chatplug.close()  # new clients, made with the setting below
        chatplug.settings.async_transport = "default"

        async def close() -> None:
            chatplug.settings.async_transport = None
            chatplug.close()

        return ours_call, close

    return {"sdk default": raw(False), "sdk aiohttp": raw(True), "chatplug": ours, "chatplug default": ours_default}


def ceiling(url: str) -> dict[str, float]:
    """The server's rate for a bare aiohttp session posting the same body: what no client above it can beat."""
    import aiohttp

    body = json.dumps({
        "contents": [{"parts": [{"text": MESSAGES[0]["content"]}], "role": "user"}],
        "generationConfig": {"temperature": 0.7, "maxOutputTokens": 500},
    }).encode()  # fmt: skip

    def make() -> tuple[Call, Callable[[], Awaitable[object]]]:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))

        async def call() -> object:
            headers = {"Content-Type": "application/json", "x-goog-api-key": KEY}
            async with session.post(f"{url}{GEMINI_PATH}", data=body, headers=headers) as response:
                return await response.read()

        return call, session.close

    return run(make, CONCURRENCY, REQUESTS)


def run_apart(name: str, url: str) -> dict[str, float]:
    """One run of one contender, in a process of its own (see ``bench_async.run_apart``)."""
    proc = subprocess.run([sys.executable, __file__, "--one", name, url], capture_output=True, text=True, check=True)
    *said, result = proc.stdout.strip().splitlines()
    for line in said:  # failures, counted in the child
        print(line, flush=True)
    return dict(json.loads(result))


def one(name: str, url: str) -> None:
    """The child of ``run_apart``: prints any failures, then the run's numbers as JSON."""
    more_files()
    pin(0, CLIENT_CORES)
    result = run(contenders(url)[name], CONCURRENCY, REQUESTS)
    if FAILED:
        print(f"gemini {name} {CONCURRENCY}: {len(FAILED)} failed, e.g. {FAILED[0]}")
    print(json.dumps(result))


def main() -> None:
    more_files()
    server, url = start_server()
    pin(0, CLIENT_CORES)  # and the children with it
    os.environ.update(environment(url), GEMINI_BASE_URL=url, GEMINI_API_KEY=KEY)
    print(f"{os.cpu_count()} cores; server: aiohttp on 127.0.0.1 in its own process, +{DELAY * 1e3:.0f} ms per request")
    if PINNED:
        print(f"server on core {sorted(SERVER_CORES)}, clients on {sorted(CLIENT_CORES)}")
    top = ceiling(url)
    print(f"server ceiling at concurrency {CONCURRENCY} (bare aiohttp client): {top['rps']:.0f} req/s")
    print()
    print("| backend | client | concurrency | req/s | vs sdk default | vs sdk aiohttp | CPU us/req | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    runs: dict[str, list[dict[str, float]]] = {}
    names = list(contenders(url))
    for turn in range(ROUNDS):  # the contenders take turns, so that drift hits them alike
        for name in names if turn % 2 == 0 else reversed(names):  # and in turn in both orders
            runs.setdefault(name, []).append(run_apart(name, url))
    for name, results in runs.items():
        row = _median(results)
        base, same = (f"{_ratio(results, runs[floor]):.2f}x" for floor in FLOORS)
        print(
            f"| gemini | {name} | {CONCURRENCY} | {row['rps']:,.0f} | {base} | {same} | "
            f"{row['cpu_us']:,.0f} | {row['p50']:.1f} | {row['p99']:.1f} |",
            flush=True,
        )
    server.communicate("")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], sys.argv[3])
    else:
        main()
