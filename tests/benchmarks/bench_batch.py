"""Batch throughput and memory, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_batch.py [--prompts 10000] [--concurrency 256] [--streamed 1000000]

1. Throughput of 10,000 prompts at concurrency 256 against a loopback Ollama server (an asyncio
   server in its own process, adding 20 ms to every request): ``chatplug.generate_batch_async``
   against the floor a user would write by hand, an ``asyncio.Semaphore`` around the raw
   ``ollama.AsyncClient`` (target: chatplug >= 0.95x its throughput), and against that same loop
   on the HTTP transport chatplug's ollama backend uses (``toolkit.async_transport_options()``,
   aiohttp unless ``LLM_ASYNC_TRANSPORT=default``), which isolates chatplug's own cost (the
   batch and the pipeline) from the HTTP stack's; ``generate_batch_sync``
   (a pool of threads) beside them; and LiteLLM's ``batch_completion`` when litellm is installed.
   The same async pair again at ``--also`` concurrencies (32 by default). Both async contenders
   run on one event loop, alternating, after a warm-up; ``--rounds N`` reports the median of N.
2. Peak memory (tracemalloc) of 1,000,000 inputs streamed from a generator through
   ``iter_batch_async`` on the ``testing`` backend, against 10,000 the same way: flat, as only
   ``concurrency`` inputs are ever in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import fixture

DELAY = 0.020
MODEL = "llama3.2"


def prompts(count: int) -> Iterator[str]:
    return (f"Question number {i}: why is the sky blue?" for i in range(count))


# -- the loopback server, in its own process --------------------------------------------------------


def serve() -> None:
    """An HTTP/1.1 keep-alive server answering every request with Ollama's reply, ``DELAY`` late."""
    body = fixture("ollama/chat_nonstream_200.json")
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                await asyncio.sleep(DELAY)
                writer.write(reply)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the server is stopping
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
        server.close()

    asyncio.run(main())


def start_server() -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


# -- throughput -----------------------------------------------------------------------------------------------


def same_transport() -> dict[str, Any] | None:
    """The keyword arguments chatplug's ollama backend gives its ``AsyncClient`` (its transport),
    when this chatplug has them: the floor with the same HTTP stack as chatplug's."""
    import chatplug.toolkit

    options = getattr(chatplug.toolkit, "async_transport_options", None)
    return None if options is None else dict(options())


async def async_rounds(url: str, count: int, concurrency: int, rounds: int) -> dict[str, float]:
    """The median seconds of ``rounds`` alternating runs of each contender, on one event loop."""
    import ollama

    import chatplug

    options = {"temperature": 0.7, "num_predict": 500}

    def raw_loop(client: ollama.AsyncClient) -> Callable[[int], Awaitable[int]]:
        async def run(count: int) -> int:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(prompt: str) -> bool:
                async with semaphore:
                    messages = [{"role": "user", "content": prompt}]
                    response = await client.chat(model=MODEL, messages=messages, options=options, stream=False)
                    return bool(response.message.content)

            return sum(await asyncio.gather(*(one(p) for p in prompts(count))))

        return run

    async def ours(count: int) -> int:
        results = await chatplug.generate_batch_async(prompts(count), concurrency=concurrency, progress=False)
        return sum(r.success for r in results)

    clients = [ollama.AsyncClient(host=url, timeout=120)]
    contenders = {"raw": raw_loop(clients[0])}
    transport = same_transport()
    if transport:
        clients.append(ollama.AsyncClient(host=url, timeout=120, **transport))
        contenders["raw, same transport"] = raw_loop(clients[1])

    async def semaphore_over_chatplug(count: int) -> int:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> bool:
            async with semaphore:
                return (await chatplug.generate_completion_async(prompt)).success

        return sum(await asyncio.gather(*(one(p) for p in prompts(count))))

    contenders["semaphore + chatplug"] = semaphore_over_chatplug
    contenders["chatplug"] = ours
    for run in contenders.values():  # warm up: connections, imports, the backend's first use
        await run(concurrency * 2)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            ok = await run(count)
            times[name].append(time.perf_counter() - start)
            assert ok == count, (name, ok)
    for client in clients:
        await client._client.aclose()
    return {name: statistics.median(values) for name, values in times.items()}


def sync_batch(count: int, concurrency: int) -> tuple[float, int]:
    import chatplug

    start = time.perf_counter()
    results = chatplug.generate_batch_sync(prompts(count), concurrency=concurrency, progress=False)
    return time.perf_counter() - start, sum(r.success for r in results)


def litellm_batch(url: str, count: int) -> tuple[float, int] | None:
    try:
        import litellm  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    messages = [[{"role": "user", "content": p}] for p in prompts(count)]
    start = time.perf_counter()
    results = litellm.batch_completion(model=f"ollama/{MODEL}", messages=messages, api_base=url)
    ok = sum(1 for r in results if not isinstance(r, Exception))
    return time.perf_counter() - start, ok


# -- memory ---------------------------------------------------------------------------------------------------


def streamed_peak(count: int, concurrency: int) -> tuple[float, float, int]:
    """Peak traced memory (MiB) and seconds for ``count`` streamed inputs on the testing backend."""
    import chatplug

    chatplug.settings.backend = "testing"  # the ambient fake: it keeps only its last 1000 requests

    async def run(count: int = count) -> int:
        received = 0
        async for _index, response in chatplug.iter_batch_async(
            prompts(count), concurrency=concurrency, progress=False
        ):
            received += response.success
        return received

    asyncio.run(run(1000))  # warm up: imports and the backend made outside the trace
    tracemalloc.start()
    start = time.perf_counter()
    received = asyncio.run(run())
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    chatplug.settings.backend = None
    return peak / 2**20, seconds, received


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--also", type=int, nargs="*", default=[32], help="other concurrencies to compare at")
    parser.add_argument("--streamed", type=int, default=1_000_000)
    args = parser.parse_args()
    count, concurrency = args.prompts, args.concurrency

    server, url = start_server()
    os.environ["OLLAMA_HOST"] = url
    os.environ["LLM_MAX_RETRIES"] = "0"
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, seconds: float, floor: float, note: str = "") -> None:
        rows.append((name, f"{seconds:.2f}", f"{count / seconds:,.0f}", f"{floor / seconds:.2f}x{note}"))

    try:
        for level in (concurrency, *args.also):
            medians = asyncio.run(async_rounds(url, count, level, args.rounds))
            floor = medians["raw"]
            row(f"raw asyncio.Semaphore({level}) + ollama.AsyncClient", floor, floor)
            if "raw, same transport" in medians:
                same = medians["raw, same transport"]
                row("  the same on chatplug's transport (toolkit.async_transport_options())", same, floor)
                row(f"chatplug generate_batch_async(concurrency={level})", medians["chatplug"], floor,
                    f"; {same / medians['chatplug']:.2f}x the same-transport floor")  # fmt: skip
            else:
                row(f"chatplug generate_batch_async(concurrency={level})", medians["chatplug"], floor)
            by_hand = medians["semaphore + chatplug"]
            row(f"  asyncio.Semaphore({level}) + chatplug.generate_completion_async", by_hand, floor,
                f"; the batch machinery: {by_hand / medians['chatplug']:.2f}x this")  # fmt: skip
            if level == concurrency:
                seconds, ok = sync_batch(count, concurrency)
                assert ok == count, ok
                row(f"chatplug generate_batch_sync(concurrency={concurrency})", seconds, floor)
                lite = litellm_batch(url, count)
                if lite is None:
                    rows.append(("litellm.batch_completion", "-", "-", "skipped: litellm is not installed"))
                else:
                    row("litellm.batch_completion (its 100 threads)", lite[0], floor, f" ({lite[1]} ok)")
    finally:
        server.communicate("")  # closing its stdin stops the server

    print(f"\n{count:,} prompts, loopback Ollama server adding {DELAY * 1000:.0f} ms per request "
          f"(median of {args.rounds} alternating round(s) for each async pair; vs raw = its throughput "
          "over the raw loop's at the same concurrency):\n")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'contender':<{width}}  {'seconds':>8}  {'req/s':>8}  vs raw")
    for name, seconds_text, rate_text, ratio in rows:
        print(f"{name:<{width}}  {seconds_text:>8}  {rate_text:>8}  {ratio}")

    print(f"\niter_batch_async, concurrency {concurrency}, testing backend, inputs from a generator:\n")
    print(f"{'inputs':>10}  {'peak traced MiB':>15}  {'seconds':>8}")
    for n in (10_000, args.streamed):
        peak, seconds, received = streamed_peak(n, concurrency)
        assert received == n, received
        print(f"{n:>10,}  {peak:>15.2f}  {seconds:>8.1f}")


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
