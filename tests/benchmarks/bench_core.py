"""Benchmarks for the core, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_core.py

1. ``import chatplug`` time, from ``python -X importtime`` in fresh processes, against the stdlib
   floor ``import dataclasses, logging, typing, enum`` measured the same way in the same run
   (target: at most 1.3x).
2. Per-call cost of chatplug against the raw ``ollama`` SDK client on the same loopback fake
   server in the same run, sync and async, as a ratio (target <= 1.05x). The floor is the raw SDK
   with a reused client; the seed's client-per-call design is measured beside it.
3. Where a sync call's time goes, layer by layer, each measured inside real calls (chatplug's
   work runs with the CPU caches cold there, and costs several times what it does in a loop):
   the SDK client with chatplug's deadline on its sockets, as the backend makes it, then the ollama backend
   (translation, client lease, ``ChatResult``), then the whole call (the pipeline). The
   pipeline is also measured directly: a raw SDK call followed by a call to a backend that
   answers at once, against the raw call alone; and in a tight loop.
4. An async attempt's hard deadline (``asyncio.timeout``, or its equivalent on Python 3.10), one
   attempt at a time and 1,000 in flight.

Batches alternate between the contenders so that drift on the machine hits both alike; the
median batch is reported.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import FakeServer, Reply, fixture

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
OPTIONS = {"temperature": 0.7, "num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}
#: The raw SDK's request, as chatplug sends it with its defaults: ``client.chat(**REQUEST)``.
REQUEST = {"model": "llama3.2", "messages": MESSAGES, "options": OPTIONS, "stream": False}


FLOOR = ("dataclasses", "logging", "typing", "enum")


def import_times_ms(runs: int = 21) -> tuple[float, float]:
    """Median ``import chatplug`` time and median stdlib floor time, interleaved run by run."""
    import chatplug

    # Measure an installed package as users have it: with bytecode compiled (pip compiles on
    # install; PYTHONDONTWRITEBYTECODE, set on some machines, would make every run recompile).
    compileall.compile_dir(str(Path(chatplug.__file__).parent), quiet=1)
    ours, floors = [], []
    for _ in range(runs):
        ours.append(_cumulative_ms("import chatplug", {"chatplug"}))
        floors.append(_cumulative_ms(f"import {', '.join(FLOOR)}", set(FLOOR)))
    return statistics.median(ours), statistics.median(floors)


def _cumulative_ms(code: str, top_level: set[str]) -> float:
    """The summed cumulative import time of the modules ``top_level`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    total = 0
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() in {f" {name}" for name in top_level}:
            total += int(parts[1])
    return total / 1000


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def compare(contenders: dict[str, Callable[[], object]], calls: int = 20, rounds: int = 300) -> dict[str, float]:
    """Per-call µs of each contender, and each one's ratio to the first (the floor).

    Short batches alternate between the contenders, many rounds over: this machine's speed
    drifts by up to 2x over seconds (shared cores), and a batch of 20 calls takes ~15 ms, so the
    two batches of a round see the same machine. Each ratio is the median of the rounds' ratios
    (``<name> ratio``, with its quartiles as ``<name> q1`` and ``<name> q3``: the spread says how
    far one run's figure can be trusted); each time the median of the rounds' times."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        per_call_us(fn, 50)  # warm up: connections, imports, first dispatch
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(per_call_us(fn, calls))
    floor = next(iter(results.values()))
    summary = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        ratios = [ours / base for ours, base in zip(values, floor, strict=True)]
        summary[f"{name} ratio"] = statistics.median(ratios)
        summary[f"{name} q1"], _, summary[f"{name} q3"] = statistics.quantiles(ratios, n=4)
    return summary


def main() -> None:
    import ollama

    import chatplug

    server, url = start_server()
    os.environ["OLLAMA_HOST"] = url

    imported, floor_ms = import_times_ms()
    print(
        f"import chatplug: {imported:.1f} ms; stdlib floor ({', '.join(FLOOR)}): {floor_ms:.1f} ms "
        f"-> {imported / floor_ms:.2f}x (python -X importtime, median of 21, interleaved)"
    )

    raw = ollama.Client(host=url, timeout=120)

    def raw_sdk() -> object:
        return raw.chat(**REQUEST)

    def new_client_per_call() -> object:
        with ollama.Client(host=url, timeout=120) as client:
            return client.chat(**REQUEST)

    def via_chatplug() -> object:
        response = chatplug.generate_completion_with_messages_sync(MESSAGES)
        assert response.success, response.error
        return response

    sync = compare(
        {
            "raw": raw_sdk,
            "deadline": sdk_client(url),
            "backend": ollama_backend(url),
            "chatplug": via_chatplug,
            "raw + pipeline": raw_then_pipeline(raw_sdk),
        }
    )
    floor, ours = sync["raw"], sync["chatplug"]
    print(
        f"sync per call: raw SDK {floor:.0f} us, chatplug {ours:.0f} us -> {sync['chatplug ratio']:.3f}x "
        f"(median of 300 paired rounds' ratios; quartiles {sync['chatplug q1']:.3f}-{sync['chatplug q3']:.3f}x)"
    )
    layers = [("raw", "deadline"), ("deadline", "backend"), ("backend", "chatplug")]
    extra = [(sync[f"{layer} ratio"] - sync[f"{below} ratio"]) * floor for below, layer in layers]
    print(
        "where it goes, inside real calls (each layer's median ratio less the one below, times the raw call): "
        f"the deadline on the sockets {extra[0]:+.1f} us, "
        f"the backend (translation, client lease, ChatResult) {extra[1]:+.1f} us, the pipeline {extra[2]:+.1f} us"
    )
    hot = pipeline_alone_us()
    between = (sync["raw + pipeline ratio"] - 1) * floor
    print(
        f"the pipeline alone (a backend that answers at once): {hot:.1f} us per call in a tight loop, "
        f"{between:.1f} us between real calls (a raw SDK call and then a pipeline call, against the raw call alone)"
    )
    after = pipeline_after_us()
    print(
        "the pipeline after 0.5 ms of other work, which makes it cold: "
        + ", ".join(f"{what} {us:.1f} us" for what, us in after.items())
    )
    seed = compare({"client per call": new_client_per_call}, calls=5, rounds=3)["client per call"]
    print(f"a new client per call (the seed's design): {seed:.0f} us -> {seed / floor:.1f}x the reused client")

    async def async_batch(use_chatplug: bool, calls: int) -> float:
        client = ollama.AsyncClient(host=url, timeout=120)
        for _ in range(10):  # warm up on this loop
            await client.chat(**REQUEST)
            await chatplug.generate_completion_with_messages_async(MESSAGES)
        t0 = time.perf_counter()
        for _ in range(calls):
            if use_chatplug:
                await chatplug.generate_completion_with_messages_async(MESSAGES)
            else:
                await client.chat(**REQUEST)
        return (time.perf_counter() - t0) / calls * 1e6

    raw_async, cp_async = [], []
    for _ in range(7):
        raw_async.append(asyncio.run(async_batch(False, 200)))
        cp_async.append(asyncio.run(async_batch(True, 200)))
    a_floor, a_cp = statistics.median(raw_async), statistics.median(cp_async)
    print(
        f"async per call: raw AsyncClient {a_floor:.0f} us, chatplug {a_cp:.0f} us -> {a_cp / a_floor:.3f}x "
        f"({a_cp - a_floor:+.1f} us per call: chatplug's async clients go over aiohttp, the raw SDK's over httpx)"
    )
    for concurrency in (1, 1000):
        costs = async_deadline_us(concurrency)
        print(
            f"an async attempt's deadline, {concurrency:,} in flight (each attempt yields to the loop once; "
            f"{costs['none']:.1f} us without one): {costs['deadline'] - costs['none']:+.1f} us"
        )
    server.communicate("")  # closing its stdin stops the server


def async_deadline_us(concurrency: int, attempts: int = 20_000, rounds: int = 7) -> dict[str, float]:
    """Per attempt, with ``concurrency`` attempts in flight, each yielding to the loop once: with no
    deadline, and with chatplug's (``_http.deadline.timeout``: ``asyncio.timeout`` from Python 3.11, a
    timer per attempt). Medians of ``rounds`` rounds in which the two take turns."""
    from chatplug._http.deadline import timeout

    async def none() -> None:
        await asyncio.sleep(0)

    async def bounded() -> None:
        async with timeout(600):
            await asyncio.sleep(0)

    async def batch(attempt: Callable[[], Any]) -> float:
        async def worker() -> None:
            for _ in range(attempts // concurrency):
                await attempt()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.perf_counter() - start) / attempts * 1e6

    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, attempt in (("none", none), ("deadline", bounded)):
            times.setdefault(name, []).append(asyncio.run(batch(attempt)))
    return {name: statistics.median(values) for name, values in times.items()}


def instant_call() -> Callable[[], object]:
    """A pipeline call to a backend that answers at once: the pipeline's work and nothing else
    (the backend ``instant``, registered for the rest of the run)."""
    import chatplug
    from chatplug import ChatBackend, ChatRequest, ChatResult

    class Instant(ChatBackend):
        default_model = "m"

        def complete(self, request: ChatRequest) -> ChatResult:
            return ChatResult(content="Hi", model=request.model, prompt_tokens=1, completion_tokens=1)

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            return self.complete(request)

    class Plugin:
        @chatplug.hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("instant", Instant)

    if "instant" not in chatplug.backend_names():
        chatplug.register_plugin(Plugin(), "bench-instant")
    return lambda: chatplug.generate_completion_with_messages_sync(MESSAGES, backend="instant")


def pipeline_alone_us(calls: int = 5000, repeats: int = 7) -> float:
    """The pipeline's cost per call in a tight loop, where its code and data stay in the CPU's
    caches (the best of ``repeats``): resolve, validate, build the request, plan, time and build
    the response."""
    call = instant_call()
    per_call_us(call, 500)
    return min(per_call_us(call, calls) for _ in range(repeats))


def pipeline_after_us(rounds: int = 100) -> dict[str, float]:
    """What makes the pipeline cost more between real calls than in a loop: its cost right
    after 0.5 ms of a busy loop that touches almost no memory, of an idle wait (the thread
    sleeps, as it does while a server answers), and of a pass over ~4 MB of objects, more than
    the core's cache holds (as the HTTP stack's work evicts the pipeline's code and data)."""
    call = instant_call()
    numbers = list(range(100_000))

    def busy() -> None:
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass

    def idle() -> None:
        time.sleep(0.0005)

    def memory() -> None:
        sum(numbers)

    costs = {}
    for what, work in (("busy", busy), ("idle", idle), ("a pass over memory", memory)):

        def then_call(work: Callable[[], None] = work) -> None:
            work()
            call()

        times = compare({"work": work, "then": then_call}, rounds=rounds)
        costs[what] = times["then"] - times["work"]
    return costs


def raw_then_pipeline(raw_sdk: Callable[[], object]) -> Callable[[], object]:
    """A raw SDK call, then a pipeline call that sends nothing: the pipeline's cost with the
    caches as a real call leaves them."""
    call = instant_call()

    def both() -> object:
        raw_sdk()
        return call()

    return both


def sdk_client(url: str) -> Callable[[], object]:
    """The raw SDK's call on a client as the ollama backend makes it: its sockets bounded by the
    call's deadline (``toolkit.deadline_client``), called inside one."""
    import ollama

    from chatplug.toolkit import deadline_client, deadline_scope

    client = ollama.Client(host=url, timeout=120)
    deadline_client(client._client)

    def call() -> object:
        with deadline_scope(time.monotonic() + 120):
            return client.chat(**REQUEST)

    return call


def ollama_backend(url: str) -> Callable[[], object]:
    """The ollama backend's ``complete()`` alone (on OLLAMA_HOST), inside a deadline as the
    pipeline calls it, with the request the pipeline would build."""
    from chatplug import ChatRequest
    from chatplug.backends.ollama import OllamaBackend
    from chatplug.toolkit import deadline_scope

    backend = OllamaBackend()
    request = ChatRequest(messages=tuple(MESSAGES), model="llama3.2", timeout=120.0)

    def call() -> object:
        with deadline_scope(time.monotonic() + 120):
            return backend.complete(request)

    return call


def start_server() -> tuple[subprocess.Popen[str], str]:
    """The fake server in its own process, so its work neither takes the client's GIL nor pads
    the floor that chatplug is compared against. Close its stdin to stop it."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def serve() -> None:
    server = FakeServer()
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    server.route("POST", "/api/chat", Reply(200, fixture("ollama/chat_nonstream_200.json"), json_type))
    plain_json = {"Content-Type": "application/json"}
    server.route("POST", "/v1/chat/completions", Reply(200, fixture("openai/chat_nonstream_200.json"), plain_json))
    server.route("POST", "/v1/messages", Reply(200, fixture("anthropic/messages_nonstream_200.json"), plain_json))
    # bench_providers.py's gemini row: the default model's path, the reply as recorded (fixtures/gemini/INDEX.md).
    google_json = {"Content-Type": "application/json; charset=UTF-8"}
    gemini = "/v1beta/models/gemini-3.8-flash:generateContent"
    server.route("POST", gemini, Reply(200, fixture("gemini/generate_200.json"), google_json))
    print(server.url, flush=True)
    sys.stdin.read()
    server.close()


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
