"""Per-call cost of the ``openai``, ``anthropic`` and ``gemini`` backends against their raw SDK
clients, and of a named OpenAI-compatible provider (``groq``, one row of ``backends/compatible.py``)
against the ``openai`` backend it runs on, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_providers.py

Same method as ``bench_core.py``: a loopback fake server in its own process answering with the
recorded wire bodies, a reused raw SDK client as the floor, batches alternating between the
contenders. Each ratio is the median of the rounds' ratios (a batch of chatplug's against the
floor's batch in the same round), with its quartiles: on shared cores one run's ratio moves by
tenths, and the quartiles say how far. Async runs each batch on a fresh event loop.

The gemini floor is one ``google.genai.Client`` (``api_version="v1beta"``, on the fake server),
reused: ``client.models.generate_content`` sync, on the SDK's default httpx2 client, and
``client.aio.models.generate_content`` async, on the SDK's default async transport, which is
aiohttp whenever aiohttp is installed (google-genai 3.x, ``BaseApiClient._use_aiohttp``: one
``aiohttp.ClientSession`` per event loop, made by the SDK), as it is here. chatplug's gemini
backend runs the same SDK on chatplug's HTTP clients: sync an ``httpx2.Client`` bounded by the
call's deadline, async an ``httpx2.AsyncClient`` on chatplug's aiohttp transport. Both send the
same body (``contents``, ``temperature`` and ``maxOutputTokens`` as chatplug's defaults). The raw
call is made as a user would make it, automatic function calling left on (the SDK's default; it
sends nothing, but an async call deep-copies the config for it), which the backend turns off.
Gemini's async throughput is measured by ``bench_gemini.py``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_core import compare, start_server

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
# What chatplug sends with its defaults, so both sides make the same request.
OPENAI_REQUEST = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0.7, "max_tokens": 500}
ANTHROPIC_REQUEST = {"model": "claude-sonnet-5-5", "messages": MESSAGES, "max_tokens": 500}
#: ``client.models.generate_content(**GEMINI_REQUEST)``: the body chatplug's gemini backend sends
#: with its defaults (``automatic_function_calling``, which it also sets, never goes on the wire).
GEMINI_MODEL = "gemini-3.8-flash"  # chatplug's default
GEMINI_REQUEST: dict[str, Any] = {
    "model": GEMINI_MODEL,
    "contents": MESSAGES[0]["content"],
    "config": {"temperature": 0.7, "max_output_tokens": 500},
}
#: The path Gemini's ``generateContent`` answers on: the model is part of it.
GEMINI_PATH = f"/v1beta/models/{GEMINI_MODEL}:generateContent"


def report(label: str, floor_name: str, results: dict[str, float], ours: str = "chatplug") -> None:
    """One line: each side's median time, and the median of the rounds' ratios with its quartiles."""
    print(
        f"{label}: {floor_name} {results[floor_name]:.0f} us, {ours} {results[ours]:.0f} us -> "
        f"{results[f'{ours} ratio']:.3f}x (quartiles {results[f'{ours} q1']:.3f}-{results[f'{ours} q3']:.3f}x)"
    )


def compare_async(
    contenders: dict[str, Callable[[], Awaitable[object]]], calls: int = 100, rounds: int = 15
) -> dict[str, float]:
    """Per-call µs of each contender, and each one's ratio to the first (the floor), summarised as
    ``bench_core.compare`` does; a batch is ``calls`` calls on a fresh event loop."""

    async def batch(fn: Callable[[], Awaitable[object]]) -> float:
        for _ in range(10):  # warm up on this loop: its clients and connections
            await fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            await fn()
        return (time.perf_counter() - t0) / calls * 1e6

    results: dict[str, list[float]] = {name: [] for name in contenders}
    # Each contender goes first in every other round: the first of a round pays for the drift.
    for round_ in range(rounds):
        items = list(contenders.items())
        for name, fn in items if round_ % 2 == 0 else reversed(items):
            results[name].append(asyncio.run(batch(fn)))
    floor = next(iter(results.values()))
    summary = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        ratios = [ours / base for ours, base in zip(values, floor, strict=True)]
        summary[f"{name} ratio"] = statistics.median(ratios)
        summary[f"{name} q1"], _, summary[f"{name} q3"] = statistics.quantiles(ratios, n=4)
    return summary


def main() -> None:
    import anthropic
    import openai
    from google import genai

    import chatplug

    server, url = start_server()
    os.environ.update(OPENAI_BASE_URL=f"{url}/v1", OPENAI_API_KEY="sk-bench", ANTHROPIC_BASE_URL=url,
                      ANTHROPIC_API_KEY="sk-ant-bench", GEMINI_BASE_URL=url, GEMINI_API_KEY="gemini-bench")
    sdk_args: dict[str, Any] = {"timeout": 120, "max_retries": 2}
    raw_openai = openai.OpenAI(**sdk_args)
    raw_anthropic = anthropic.Anthropic(**sdk_args)
    # One client for both: for its async calls the SDK makes an aiohttp session per event loop.
    raw_gemini = genai.Client(
        api_key="gemini-bench",
        http_options=genai.types.HttpOptions(base_url=url, api_version="v1beta", timeout=120_000),  # ms
    )
    async_clients: dict[asyncio.AbstractEventLoop, Any] = {}

    def per_loop(cls: type[Any]) -> Any:
        """The raw SDK's async client, reused on the running loop: the fair floor."""
        loop = asyncio.get_running_loop()
        if loop not in async_clients:
            async_clients[loop] = cls(**sdk_args)
        return async_clients[loop]

    def check(response: chatplug.LLMResponse) -> object:
        assert response.success, response.error
        return response

    for backend, model, raw_sync, raw_async in (
        (
            "openai",
            "gpt-4o-mini",
            lambda: raw_openai.chat.completions.create(**OPENAI_REQUEST),
            lambda: per_loop(openai.AsyncOpenAI).chat.completions.create(**OPENAI_REQUEST),
        ),
        (
            "anthropic",
            "claude-sonnet-5-5",
            lambda: raw_anthropic.messages.create(**ANTHROPIC_REQUEST),
            lambda: per_loop(anthropic.AsyncAnthropic).messages.create(**ANTHROPIC_REQUEST),
        ),
        (
            "gemini",
            GEMINI_MODEL,
            lambda: raw_gemini.models.generate_content(**GEMINI_REQUEST),
            lambda: raw_gemini.aio.models.generate_content(**GEMINI_REQUEST),
        ),
    ):
        floor = f"raw {backend} SDK"
        report(f"{backend} sync per call", floor, compare({
            floor: raw_sync,
            "chatplug": lambda b=backend, m=model: check(
                chatplug.generate_completion_with_messages_sync(MESSAGES, m, backend=b)
            ),
        }))

        async def ours(b: str = backend, m: str = model) -> object:
            return check(await chatplug.generate_completion_with_messages_async(MESSAGES, m, backend=b))

        report(f"{backend} async per call", floor, compare_async({floor: raw_async, "chatplug": ours}))
        async_clients.clear()

    # A named provider costs what the openai backend does: the same machinery, one row of data.
    os.environ.update(GROQ_BASE_URL=f"{url}/v1", GROQ_API_KEY="gsk-bench")
    model = str(OPENAI_REQUEST["model"])

    def named(b: str) -> Callable[[], object]:
        return lambda: check(chatplug.generate_completion_with_messages_sync(MESSAGES, model, backend=b))

    report("groq sync per call", "openai", compare({"openai": named("openai"), "groq": named("groq")}), "groq")

    async def named_async(b: str) -> object:
        return check(await chatplug.generate_completion_with_messages_async(MESSAGES, model, backend=b))

    results = compare_async({"openai": lambda: named_async("openai"), "groq": lambda: named_async("groq")})
    report("groq async per call", "openai", results, "groq")
    server.communicate("")  # closing its stdin stops the server


if __name__ == "__main__":
    main()
