"""What each micro-optimisation kept in ``src/`` is worth, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_kept.py

Issue 26: a trick that makes the code harder to read stays only if it is worth more than 2% of a
call to a loopback server. Each is measured here against the plain code it replaces, inside real
calls, in the same run: the trick on (as shipped) and off (the plain alternative, put in its place
by a small swap made in this process only; ``src/`` is never changed), batch after batch:

1. ``settings._Raw``: the environment read through ``os.environ._data`` (private); off, through
   ``os.environ`` (``_Raw`` without ``data``, the way chatplug takes where ``_data`` is not there).
   A sync ollama call, one message.
2. ``lean_cookies``: ollama's httpx client hands a reply to its cookie jar only when it sets a
   cookie; off, every reply (``httpx.Cookies.extract_cookies``). A sync ollama call, one message.
3. ``ChatRequest._of``: the pipeline's request made without the dataclass ``__init__``; off,
   ``ChatRequest(**fields)``, which freezes the (already read-only) messages again. A sync call
   with a 50-message conversation; and, for context (``3-1``, no verdict), with one message.
4. In ``_pipeline/validate.py``: (a) the plain-text message shortcut in ``checked_messages``; off,
   every message through ``_message`` (the shortcut's ``TEXT_ROLES`` emptied), a sync call with a
   50-message conversation; (b) the ``lru_cache`` on ``_near_keyword``; off, the function
   uncached (its ``__wrapped__``), a sync call of one message with ollama's usual options
   (``num_predict``, ``top_p``, ``repeat_penalty``).
5. ``ChatChunk`` not frozen; off, a frozen one: a subclass with the ``__init__``,
   ``__setattr__`` and ``__delattr__`` that ``@dataclass(frozen=True)`` makes for the same fields
   (a frozen dataclass cannot inherit from a non-frozen one), made by the ollama backend. A sync
   stream of ``BENCH_KEPT_CHUNKS`` (500) chunks from the streaming benchmark's server.
6. ``unbind`` (``_http/transports.py``): httpx's response wrapper replaced by the stream once the
   stream is closed, so that no reference cycle is left; off, ``unbind`` only forgets the response
   and the cycle stays, for the garbage collector. Async ollama calls over chatplug's aiohttp
   transport, ``BENCH_KEPT_INFLIGHT`` (500) in flight, to the async benchmark's server (20 ms late).

The sync servers are ``bench_core.py``'s and ``bench_streaming.py``'s, each in a process of its own.
Each round runs a batch with the trick on and a batch with it off, in one order then the other
(the swap is made between batches, outside the time); a round's ratio is the off batch's time over
the on batch's, and a trick is "worth" the median of the rounds' ratios less one, with their
quartiles and the median's 95% confidence interval (from the order statistics: how far one run's
figure can be trusted, against issue 26's bar of 2%). Sync batches are
``BENCH_KEPT_CALLS`` (10) calls (streams: 1), ``BENCH_KEPT_ROUNDS`` (300) rounds. The async
batches are ``BENCH_KEPT_ASYNC_REQUESTS`` (2,000) requests on one event loop,
``BENCH_KEPT_ASYNC_ROUNDS`` (20) rounds, compared by the client process's CPU time
(``time.process_time``; the server runs in its own process) and reported with the wall time too;
each async batch ends with a ``gc.collect()`` inside its time, so that the cycles a batch leaves
are paid by that batch and not by the next. ``BENCH_KEPT_ONLY=1,4b`` runs some of them only.
A whole run takes 3.5-4 minutes on 2 shared cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks import bench_async, bench_core, bench_streaming

ROUNDS = int(os.environ.get("BENCH_KEPT_ROUNDS", "300"))
CALLS = int(os.environ.get("BENCH_KEPT_CALLS", "10"))
CHUNKS = int(os.environ.get("BENCH_KEPT_CHUNKS", "500"))
INFLIGHT = int(os.environ.get("BENCH_KEPT_INFLIGHT", "500"))
ASYNC_REQUESTS = int(os.environ.get("BENCH_KEPT_ASYNC_REQUESTS", "2000"))
ASYNC_ROUNDS = int(os.environ.get("BENCH_KEPT_ASYNC_ROUNDS", "20"))
ONLY = [name for name in os.environ.get("BENCH_KEPT_ONLY", "").split(",") if name]
#: Issue 26's bar: a trick is kept only if it is worth more than this share of a call.
BAR = 0.02

MESSAGES = bench_core.MESSAGES
#: ollama's usual options, as a program passes them (each name goes through the typo check).
USUAL_OPTIONS = {"num_predict": 500, "top_p": 0.9, "repeat_penalty": 1.1}

Switch = Callable[[], None]


def conversation(count: int = 50) -> list[dict[str, str]]:
    """A system message, then user and assistant taking turns: ``count`` plain-text messages."""
    messages = [{"role": "system", "content": "You are a concise assistant. Answer in one short paragraph."}]
    for i in range(count - 1):
        if i % 2 == 0:
            messages.append({"role": "user", "content": f"Question {i // 2 + 1}: why is the sky blue at noon?"})
        else:
            text = "Sunlight scatters off the air's molecules, and blue light, being shorter, scatters the most."
            messages.append({"role": "assistant", "content": text})
    return messages


# -- the measurement ----------------------------------------------------------------------------


@dataclasses.dataclass
class Worth:
    """A trick's worth: the rounds' ratios of off to on, and the median times a call."""

    ratios: list[float]
    on: float
    off: float
    unit: str = "us"

    @property
    def share(self) -> float:
        return statistics.median(self.ratios) - 1

    def interval(self) -> tuple[float, float]:
        """The median's 95% confidence interval, from the order statistics (no assumption on the
        ratios' distribution): ``k`` places either side of the middle, ``k = 0.98 sqrt(n)``."""
        ordered, n = sorted(self.ratios), len(self.ratios)
        k = round(0.98 * n**0.5)
        return ordered[max(0, (n - 1) // 2 - k)] - 1, ordered[min(n - 1, n // 2 + k)] - 1

    def line(self, name: str, where: str, verdict: bool = True) -> str:
        q1, _, q3 = statistics.quantiles(self.ratios, n=4)
        low, high = self.interval()
        said = ("keep (> 2%)" if self.share > BAR else "undo (<= 2%)") if verdict else "for context, no verdict"
        return (
            f"{name}: worth {self.share:+.1%} of a call (quartiles {q1 - 1:+.1%} to {q3 - 1:+.1%}; "
            f"the median's 95% interval {low:+.1%} to {high:+.1%}); "
            f"{self.on:,.0f} {self.unit} on, {self.off:,.0f} {self.unit} off; {where} -> {said}"
        )


def per_call_us(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def ab(call: Callable[[], object], on: Switch, off: Switch, calls: int = CALLS, rounds: int = ROUNDS) -> Worth:
    """``call`` with the trick on and off, batch after batch, in one order then the other."""
    times: dict[str, list[float]] = {"on": [], "off": []}
    switches = [("on", on), ("off", off)]
    for _, switch in switches:  # warm up both ways
        switch()
        per_call_us(call, 20)
    for turn in range(rounds):
        for name, switch in switches if turn % 2 == 0 else reversed(switches):
            switch()
            times[name].append(per_call_us(call, calls))
    on()  # as shipped again
    ratios = [off_us / on_us for off_us, on_us in zip(times["off"], times["on"], strict=True)]
    return Worth(ratios, statistics.median(times["on"]), statistics.median(times["off"]))


def sync_call(messages: list[dict[str, str]], **options: Any) -> Callable[[], object]:
    import chatplug

    def call() -> object:
        response = chatplug.generate_completion_with_messages_sync(messages, **options)
        assert response.success, response.error
        return response

    call()  # the first call finds what the swaps replace (the environment's reader, the client)
    return call


def stream_call() -> Callable[[], object]:
    import chatplug

    def call() -> object:
        with chatplug.stream_completion_with_messages_sync(MESSAGES) as chunks:
            for _ in chunks:
                pass
        assert chunks.response.success, chunks.response.error
        return chunks.response

    call()
    return call


# -- the swaps: each returns (on, off); off puts the plain code in place, in this process only ---


def swap_environ() -> tuple[Switch, Switch]:
    """1: ``settings._Raw`` with ``os.environ._data`` (shipped), or without (the public mapping)."""
    from chatplug._core import settings

    shipped = settings._raw  # found by the first call
    assert shipped.data is not None, "os.environ._data is not in use: nothing to measure"
    plain = settings._Raw(os.environ)  # no data: env() and _texts() read os.environ itself
    return lambda: setattr(settings, "_raw", shipped), lambda: setattr(settings, "_raw", plain)


def swap_cookies() -> tuple[Switch, Switch]:
    """2: ``lean_cookies``'s jar (shipped), or httpx's plain ``Cookies.extract_cookies``."""
    from chatplug._core import internals

    lean = internals._set_cookies_only()
    shipped = lean.__dict__["extract_cookies"]

    def on() -> None:
        lean.extract_cookies = shipped

    def off() -> None:
        if "extract_cookies" in lean.__dict__:
            del lean.extract_cookies  # inherited: httpx.Cookies.extract_cookies, every reply to the jar

    return on, off


def swap_request() -> tuple[Switch, Switch]:
    """3: ``ChatRequest._of`` (shipped), or ``ChatRequest(**fields)``."""
    from chatplug import ChatRequest

    shipped = ChatRequest.__dict__["_of"]
    plain = classmethod(lambda cls, fields: cls(**fields))
    return lambda: setattr(ChatRequest, "_of", shipped), lambda: setattr(ChatRequest, "_of", plain)


def swap_plain_text() -> tuple[Switch, Switch]:
    """4a: ``checked_messages``'s plain-text shortcut (shipped), or none: with ``TEXT_ROLES``
    empty, no message takes it, and each goes through ``_message`` and ``freeze``."""
    from chatplug._pipeline import validate

    shipped = validate.TEXT_ROLES
    return lambda: setattr(validate, "TEXT_ROLES", shipped), lambda: setattr(validate, "TEXT_ROLES", ())


def swap_keyword_cache() -> tuple[Switch, Switch]:
    """4b: ``_near_keyword`` cached (shipped), or the plain function (``difflib`` every call)."""
    from chatplug._pipeline import validate

    shipped = validate._near_keyword
    plain = shipped.__wrapped__
    return lambda: setattr(validate, "_near_keyword", shipped), lambda: setattr(validate, "_near_keyword", plain)


def frozen_chunk() -> type[Any]:
    """``ChatChunk`` as ``@dataclass(frozen=True)`` would make it: the same fields, set in
    ``__init__`` through ``object.__setattr__``, and read-only after. A subclass, so that the
    pipeline takes it (it checks ``isinstance(chunk, ChatChunk)``)."""
    from chatplug import ChatChunk

    fields = [(f.name, f.type, f.default) for f in dataclasses.fields(ChatChunk)]
    frozen = dataclasses.make_dataclass("ChatChunk", fields, frozen=True)

    class FrozenChatChunk(ChatChunk):  # type: ignore[misc]
        __slots__ = ()
        __init__ = frozen.__init__
        __setattr__ = frozen.__setattr__
        __delattr__ = frozen.__delattr__

    chunk = FrozenChatChunk(text="a")
    try:
        chunk.text = "b"
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("FrozenChatChunk is not frozen")
    return FrozenChatChunk


def swap_chunk() -> tuple[Switch, Switch]:
    """5: the ollama backend's chunks plain (shipped), or frozen."""
    from chatplug.backends import ollama

    shipped, frozen = ollama.ChatChunk, frozen_chunk()
    return lambda: setattr(ollama, "ChatChunk", shipped), lambda: setattr(ollama, "ChatChunk", frozen)


def swap_unbind() -> tuple[Switch, Switch]:
    """6: ``unbind`` (shipped), or a plain one that only forgets the response: httpx's wrapper
    stays on it, and refers back to it (a cycle, for the garbage collector)."""
    from chatplug._http import transports

    shipped = transports.unbind

    def forget_only(stream: Any) -> None:
        stream._owner = None

    return lambda: setattr(transports, "unbind", shipped), lambda: setattr(transports, "unbind", forget_only)


# -- async, many in flight (6) ------------------------------------------------------------------


def ab_async(on: Switch, off: Switch) -> tuple[Worth, Worth]:
    """(CPU, wall) of ``ASYNC_REQUESTS`` async ollama calls, ``INFLIGHT`` at a time, on and off,
    batch after batch on one event loop (its clients made once)."""
    import chatplug

    async def main() -> tuple[Worth, Worth]:
        failed: list[str] = []

        async def batch(total: int) -> tuple[float, float]:
            async def worker() -> None:
                for _ in range(total // INFLIGHT):
                    response = await chatplug.generate_completion_with_messages_async(MESSAGES)
                    if not response.success:
                        failed.append(response.error or "")

            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(INFLIGHT)))
            gc.collect()  # what the batch left for the collector, paid by this batch
            return (time.process_time() - cpu) / total * 1e6, (time.perf_counter() - wall) / total * 1e6

        switches = [("on", on), ("off", off)]
        for _, switch in switches:  # warm up both ways: connections, first dispatch
            switch()
            await batch(INFLIGHT * 2)
        times: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        for turn in range(ASYNC_ROUNDS):
            for name, switch in switches if turn % 2 == 0 else reversed(switches):
                switch()
                times[name].append(await batch(ASYNC_REQUESTS))
        on()
        assert not failed, f"{len(failed)} async calls failed, e.g. {failed[0]}"
        worths = []
        for i in (0, 1):
            ons, offs = [t[i] for t in times["on"]], [t[i] for t in times["off"]]
            ratios = [b / a for b, a in zip(offs, ons, strict=True)]
            worths.append(Worth(ratios, statistics.median(ons), statistics.median(offs), "us"))
        return worths[0], worths[1]

    return asyncio.run(main())


# -- the run ------------------------------------------------------------------------------------


def wanted(key: str) -> bool:
    return not ONLY or key in ONLY


def main() -> None:
    import chatplug

    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; each trick on (as shipped) against off "
        f"(the plain code), {ROUNDS} rounds of {CALLS} sync calls, the order alternating; median of the rounds' ratios"
    )
    server, url = bench_core.start_server()
    os.environ["OLLAMA_HOST"] = url
    one, fifty = sync_call(MESSAGES), sync_call(conversation(50))
    sync = [
        ("1", "settings._Raw (os.environ._data)", one, swap_environ, "sync ollama call, 1 message"),
        ("2", "lean_cookies", one, swap_cookies, "sync ollama call, 1 message"),
        ("3", "ChatRequest._of", fifty, swap_request, "sync ollama call, 50 messages"),
        ("3-1", "ChatRequest._of", one, swap_request, "sync ollama call, 1 message"),
        ("4a", "validate's plain-text shortcut", fifty, swap_plain_text, "sync ollama call, 50 messages"),
        ("4b", "lru_cache on _near_keyword", sync_call(MESSAGES, **USUAL_OPTIONS), swap_keyword_cache,
         "sync ollama call, 1 message, num_predict, top_p and repeat_penalty"),
    ]  # fmt: skip
    for key, name, call, swap, where in sync:
        if wanted(key):
            print(f"{key}. " + ab(call, *swap()).line(name, where, verdict="-" not in key), flush=True)
    server.communicate("")

    if wanted("5"):
        server, url = bench_streaming.start_server(CHUNKS)
        os.environ["OLLAMA_HOST"] = url
        stream = stream_call()
        worth = ab(stream, *swap_chunk(), calls=1)
        worth.on, worth.off, worth.unit = worth.on / CHUNKS, worth.off / CHUNKS, "us a chunk"
        print(f"5. {worth.line('ChatChunk not frozen', f'sync ollama stream of {CHUNKS} chunks')}", flush=True)
        server.communicate("")

    if wanted("6"):
        bench_async.more_files()
        server, url = bench_async.start_server()
        os.environ.update(bench_async.environment(url))
        cpu, wall = ab_async(*swap_unbind())
        where = (
            f"async ollama calls over aiohttp, {INFLIGHT} in flight, server 20 ms late; "
            f"{ASYNC_ROUNDS} rounds of {ASYNC_REQUESTS:,} requests; by CPU (wall: {wall.share:+.1%}, "
            f"{wall.on:,.0f} us on, {wall.off:,.0f} us off a request)"
        )
        cpu.unit = "us CPU"
        print(f"6. {cpu.line('unbind', where)}", flush=True)
        chatplug.close()
        server.communicate("")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
