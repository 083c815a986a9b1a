"""Benchmarks for the core, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_core.py

1. ``import chatplug`` time, from ``python -X importtime`` in fresh processes, against the stdlib
   floor ``import dataclasses, logging, typing, enum`` measured the same way in the same run
   (target: at most 1.3x).
2. Per-call cost of chatplug against the raw ``ollama`` SDK client on the same loopback fake
   server in the same run, sync and async, as a ratio (target <= 1.05x), and the dispatcher's
   own cost in microseconds per call (chatplug's time less the raw SDK's). The floor is the raw
   SDK with a reused client; the seed's client-per-call design is measured beside it. The
   dispatcher's own cost is also measured with a backend that answers at once, hot and cold.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import FakeServer, Reply, fixture

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
OPTIONS = {"temperature": 0.7, "num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}


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
    two batches of a round see the same machine. Each ratio is the median of the rounds' ratios;
    each time the median of the rounds' times."""
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        per_call_us(fn, 50)  # warm up: connections, imports, first dispatch
    for _ in range(rounds):
        for name, fn in contenders.items():
            results[name].append(per_call_us(fn, calls))
    floor = next(iter(results.values()))
    summary = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        summary[f"{name} ratio"] = statistics.median(ours / base for ours, base in zip(values, floor, strict=True))
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
        return raw.chat(model="llama3.2", messages=MESSAGES, options=OPTIONS, stream=False)

    def new_client_per_call() -> object:
        with ollama.Client(host=url, timeout=120) as client:
            return client.chat(model="llama3.2", messages=MESSAGES, options=OPTIONS, stream=False)

    def via_chatplug() -> object:
        response = chatplug.generate_completion_with_messages_sync(MESSAGES)
        assert response.success, response.error
        return response

    sync = compare({"raw ollama.Client": raw_sdk, "chatplug sync": via_chatplug})
    floor = sync["raw ollama.Client"]
    ours = sync["chatplug sync"]
    print(
        f"sync per call: raw SDK {floor:.0f} us, chatplug {ours:.0f} us -> {sync['chatplug sync ratio']:.3f}x "
        f"(median of 300 paired rounds; the dispatcher and backend: {ours - floor:.1f} us per call)"
    )
    hot, cold = dispatcher_alone_us()
    print(
        f"the dispatcher alone (a backend that answers at once, no I/O): {hot:.1f} us per call in a tight loop, "
        f"{cold:.1f} us with the CPU caches cold (after other work, as between two real calls)"
    )
    seed = compare({"client per call": new_client_per_call}, calls=5, rounds=3)["client per call"]
    print(f"a new client per call (the seed's design): {seed:.0f} us -> {seed / floor:.1f}x the reused client")

    async def async_batch(use_chatplug: bool, calls: int) -> float:
        client = ollama.AsyncClient(host=url, timeout=120)
        for _ in range(10):  # warm up on this loop
            await client.chat(model="llama3.2", messages=MESSAGES, options=OPTIONS, stream=False)
            await chatplug.generate_completion_with_messages_async(MESSAGES)
        t0 = time.perf_counter()
        for _ in range(calls):
            if use_chatplug:
                await chatplug.generate_completion_with_messages_async(MESSAGES)
            else:
                await client.chat(model="llama3.2", messages=MESSAGES, options=OPTIONS, stream=False)
        return (time.perf_counter() - t0) / calls * 1e6

    raw_async, cp_async = [], []
    for _ in range(7):
        raw_async.append(asyncio.run(async_batch(False, 200)))
        cp_async.append(asyncio.run(async_batch(True, 200)))
    a_floor, a_cp = statistics.median(raw_async), statistics.median(cp_async)
    print(
        f"async per call: raw AsyncClient {a_floor:.0f} us, chatplug {a_cp:.0f} us -> {a_cp / a_floor:.3f}x "
        f"(the dispatcher: {a_cp - a_floor:.1f} us per call)"
    )
    server.communicate("")  # closing its stdin stops the server


def dispatcher_alone_us(calls: int = 5000, repeats: int = 7) -> tuple[float, float]:
    """chatplug's own cost per call, with a backend that returns a reply at once: resolve,
    validate, build the request, plan, time and build the response. Twice: in a tight loop (the
    best of ``repeats``), and cold, after other work has filled the CPU's caches, as in a real
    call, where the HTTP stack runs between two calls (the median over 150 paired batches of that
    work alone and that work followed by a call)."""
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

    chatplug.register_plugin(Plugin(), "bench-instant")
    try:
        call = lambda: chatplug.generate_completion_with_messages_sync(MESSAGES, backend="instant")  # noqa: E731
        per_call_us(call, 500)
        hot = min(per_call_us(call, calls) for _ in range(repeats))
        numbers = list(range(300_000))  # ~10 MB of objects: more than the caches hold

        def other_work() -> None:
            sum(numbers)

        def work_then_call() -> None:
            sum(numbers)
            call()

        cold = statistics.median(
            per_call_us(work_then_call, 20) - per_call_us(other_work, 20) for _ in range(150)
        )
        return hot, cold
    finally:
        chatplug.unregister_plugin("bench-instant")


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
    print(server.url, flush=True)
    sys.stdin.read()
    server.close()


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["--serve"] else main()
