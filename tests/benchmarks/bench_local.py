"""The local backend: model load, tokens/s, and 8 concurrent async calls against 8 sequential ones.

    .venv/bin/python tests/benchmarks/bench_local.py [--tokens 32]

Async calls go to llama.cpp's loopback HTTP server through one httpx client per loop; the
model has CHATPLUG_LOCAL_PARALLEL slots (default 4), so concurrent calls share its batches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import chatplug
from chatplug import generate_completion_async, generate_completion_sync
from chatplug.backends import local

PROMPT = "Why is the sky blue?"


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
    chatplug.close()


if __name__ == "__main__":
    main()
