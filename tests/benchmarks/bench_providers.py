"""Per-call cost of the ``openai`` and ``anthropic`` backends against their raw SDK clients, and
of a named OpenAI-compatible provider (``groq``, one row of ``backends/compatible.py``) against the
``openai`` backend it runs on, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_providers.py

Same method as ``bench_core.py``: a loopback fake server in its own process answering with the
recorded wire bodies, a reused raw SDK client as the floor, batches alternating between the
contenders, the median batch reported as a ratio. Async runs each batch on a fresh event loop.
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


def report(label: str, floor_name: str, results: dict[str, float]) -> None:
    floor, ours = results[floor_name], results["chatplug"]
    print(f"{label}: {floor_name} {floor:.0f} us, chatplug {ours:.0f} us -> {ours / floor:.3f}x")


def compare_async(contenders: dict[str, Callable[[], Awaitable[object]]], calls: int = 200) -> dict[str, float]:
    async def batch(fn: Callable[[], Awaitable[object]]) -> float:
        for _ in range(10):  # warm up on this loop: its clients and connections
            await fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            await fn()
        return (time.perf_counter() - t0) / calls * 1e6

    results: dict[str, list[float]] = {name: [] for name in contenders}
    # Each contender goes first in every other round: the first of a round pays for the drift.
    for round_ in range(7):
        items = list(contenders.items())
        for name, fn in items if round_ % 2 == 0 else reversed(items):
            results[name].append(asyncio.run(batch(fn)))
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    import anthropic
    import openai

    import chatplug

    server, url = start_server()
    os.environ.update(OPENAI_BASE_URL=f"{url}/v1", OPENAI_API_KEY="sk-bench", ANTHROPIC_BASE_URL=url,
                      ANTHROPIC_API_KEY="sk-ant-bench")
    sdk_args: dict[str, Any] = {"timeout": 120, "max_retries": 2}
    raw_openai = openai.OpenAI(**sdk_args)
    raw_anthropic = anthropic.Anthropic(**sdk_args)
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

    for backend, raw_sync, raw_async in (
        (
            "openai",
            lambda: raw_openai.chat.completions.create(**OPENAI_REQUEST),
            lambda: per_loop(openai.AsyncOpenAI).chat.completions.create(**OPENAI_REQUEST),
        ),
        (
            "anthropic",
            lambda: raw_anthropic.messages.create(**ANTHROPIC_REQUEST),
            lambda: per_loop(anthropic.AsyncAnthropic).messages.create(**ANTHROPIC_REQUEST),
        ),
    ):
        floor = f"raw {backend} SDK"
        report(f"{backend} sync per call", floor, compare({
            floor: raw_sync,
            "chatplug": lambda b=backend: check(chatplug.generate_completion_with_messages_sync(MESSAGES, backend=b)),
        }))

        async def ours(b: str = backend) -> object:
            return check(await chatplug.generate_completion_with_messages_async(MESSAGES, backend=b))

        report(f"{backend} async per call", floor, compare_async({floor: raw_async, "chatplug": ours}))
        async_clients.clear()

    # A named provider costs what the openai backend does: the same machinery, one row of data.
    os.environ.update(GROQ_BASE_URL=f"{url}/v1", GROQ_API_KEY="gsk-bench")
    model = OPENAI_REQUEST["model"]

    def named(b: str) -> Callable[[], object]:
        return lambda: check(chatplug.generate_completion_with_messages_sync(MESSAGES, model, backend=b))

    sync = compare({"openai": named("openai"), "groq": named("groq")})
    print(f"groq sync per call: openai backend {sync['openai']:.0f} us, groq {sync['groq']:.0f} us -> "
          f"{sync['groq ratio']:.3f}x (quartiles {sync['groq q1']:.3f}-{sync['groq q3']:.3f}x)")

    async def named_async(b: str) -> object:
        return check(await chatplug.generate_completion_with_messages_async(MESSAGES, model, backend=b))

    results = compare_async({"openai": lambda: named_async("openai"), "groq": lambda: named_async("groq")})
    print(f"groq async per call: openai backend {results['openai']:.0f} us, groq {results['groq']:.0f} us -> "
          f"{results['groq'] / results['openai']:.3f}x")
    server.communicate("")  # closing its stdin stops the server


if __name__ == "__main__":
    main()
