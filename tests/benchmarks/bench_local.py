"""The local backend: model load, tokens/s, 8 concurrent async calls against 8 sequential ones,
and streaming: time to first token and the cost per chunk of chatplug's streams over llama.cpp's
own streaming callback.

    .venv/bin/python tests/benchmarks/bench_local.py [--tokens 32] [--stream-tokens 128]

Async calls go to llama.cpp's loopback HTTP server through one httpx client per loop; the
model has CHATPLUG_LOCAL_PARALLEL slots (default 4), so concurrent calls share its batches.
A sync stream runs ``handle_chat_completions`` in a worker thread feeding a queue; an async
stream reads the loopback server's SSE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import chatplug
from chatplug import (
    generate_completion_async,
    generate_completion_sync,
    stream_completion_async,
    stream_completion_sync,
)
from chatplug.backends import local

PROMPT = "Why is the sky blue?"
#: SmolLM2's end tokens banned: every stream runs to its max_tokens, so all have as many chunks.
NO_END = [[0, False], [2, False]]


async def sequential(n: int, tokens: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        (await generate_completion_async(PROMPT, max_tokens=tokens)).raise_for_error()
    return time.perf_counter() - start


async def concurrent(n: int, tokens: int) -> float:
    start = time.perf_counter()
    for response in await asyncio.gather(*(generate_completion_async(PROMPT, max_tokens=tokens) for _ in range(n))):
        response.raise_for_error()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--stream-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(LLM_BACKEND="local", LLM_TEMPERATURE="0")
    path = local.default_model_file()
    start = time.perf_counter()
    model = local.LocalModel(path)
    threads, slots = os.environ.get("CHATPLUG_LOCAL_THREADS", "1"), os.environ.get("CHATPLUG_LOCAL_PARALLEL", "4")
    print(f"model load: {time.perf_counter() - start:.2f} s (threads {threads}, slots {slots})")
    del model  # unloaded: the calls below load the backend's own
    generate_completion_sync(PROMPT, max_tokens=1).raise_for_error()  # the backend's own model, loaded
    start = time.perf_counter()
    response = generate_completion_sync(PROMPT, max_tokens=64).raise_for_error()
    took = time.perf_counter() - start
    tokens = response.completion_tokens
    print(f"sync call, {tokens} tokens: {took:.2f} s = {tokens / took:.1f} tokens/s")

    async def both() -> tuple[float, float]:
        await sequential(1, 1)  # the loop's client
        return await sequential(args.n, args.tokens), await concurrent(args.n, args.tokens)

    seq, conc = asyncio.run(both())
    print(f"{args.n} async calls of {args.tokens} tokens: sequential {seq:.2f} s, concurrent {conc:.2f} s, "
          f"ratio {seq / conc:.2f}x")
    streaming(args.stream_tokens, args.runs)
    chatplug.close()


Timing = tuple[float, float, int]  # time to first token, total, chunks


def raw_stream(model: local.LocalModel, tokens: int) -> Timing:
    """llama.cpp's own streaming: ``handle_chat_completions`` calling back once per chunk."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": tokens,
            "logit_bias": NO_END, "stream": True, "stream_options": {"include_usage": True}}
    first: list[float] = []
    chunks = 0
    start = time.perf_counter()

    def callback(event: Any) -> bool:
        nonlocal chunks
        chunks += 1
        if not first and event["choices"] and event["choices"][0]["delta"].get("content"):
            first.append(time.perf_counter() - start)
        return False

    model.server.handle_chat_completions(body, callback)
    return first[0], time.perf_counter() - start, chunks


def sync_stream(tokens: int) -> Timing:
    start = time.perf_counter()
    with stream_completion_sync(PROMPT, max_tokens=tokens, logit_bias=NO_END) as stream:
        chunks = sum(1 for _ in stream)
    response = stream.response.raise_for_error()
    assert response.time_to_first_token is not None
    return response.time_to_first_token, time.perf_counter() - start, chunks


async def async_stream(tokens: int) -> Timing:
    start = time.perf_counter()
    async with stream_completion_async(PROMPT, max_tokens=tokens, logit_bias=NO_END) as stream:
        chunks = 0
        async for _ in stream:
            chunks += 1
    response = stream.response.raise_for_error()
    assert response.time_to_first_token is not None
    return response.time_to_first_token, time.perf_counter() - start, chunks


def streaming(tokens: int, runs: int) -> None:
    """Time to first token and per-chunk cost: each way ``runs`` times, interleaved, medians."""
    model = chatplug_backend().model(local.DEFAULT_MODEL)

    async def async_runs() -> list[Timing]:
        return [await async_stream(tokens) for _ in range(runs)]

    raw = [raw_stream(model, tokens) for _ in range(runs)]
    sync = [sync_stream(tokens) for _ in range(runs)]
    async_ = asyncio.run(async_runs())
    base_first, base_total = statistics.median(t[0] for t in raw), statistics.median(t[1] for t in raw)
    print(f"streams of {tokens} tokens, median of {runs}:")
    for name, timings in (("raw callback", raw), ("stream_completion_sync", sync), ("stream_completion_async", async_)):
        first, total = statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)
        chunks = timings[0][2]
        extra = (total - base_total) / chunks * 1e6
        print(f"  {name:24} first token {first * 1000:6.1f} ms (+{(first - base_first) * 1000:5.1f}), "
              f"total {total:.2f} s, {chunks} chunks, {total / chunks * 1000:.2f} ms/chunk "
              f"({extra:+.0f} us/chunk over raw)")


def chatplug_backend() -> local.LocalBackend:
    from chatplug._plugins import plugins

    chosen = plugins().backends.get("local")
    assert isinstance(chosen, local.LocalBackend)
    return chosen


if __name__ == "__main__":
    main()
