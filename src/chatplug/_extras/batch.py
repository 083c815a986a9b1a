"""Batches: many inputs through the public per-call functions, a bounded number at a time.

Every input goes through ``generate_completion_*`` (or ``..._with_messages_*``) exactly as a
single call would, so whatever the pipeline does for one call (retries, fallbacks, deadlines,
and whatever it adds later) it does for each input of a batch too.

One engine per kind of concurrency, each feeding at most ``concurrency`` inputs at a time from
the caller's iterable (never ``list(inputs)``) and yielding ``(index, response)`` as they
complete; the list forms collect that stream in input order:

- async: one event loop, a task per input in flight, no thread per request;
- sync: at most ``concurrency`` daemon worker threads calling the sync functions.

Imported on first use (``chatplug.generate_batch_sync`` ...): ``import chatplug`` does not pay
for asyncio, threads or the progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from .._core.exceptions import InvalidInputError
from .._core.values import LLMResponse
from .._pipeline.api import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)
from .._pipeline.response import as_chatplug_error, failed

__all__ = [
    "BatchProgress",
    "generate_batch_async",
    "generate_batch_sync",
    "iter_batch_async",
    "iter_batch_sync",
]

#: One input of a batch: a prompt, or a list of messages.
BatchInput: TypeAlias = "str | Sequence[Mapping[str, Any]]"
#: ``progress=``: ``None`` (a bar on a terminal), ``True``/``False`` (force it on or off), or a callback.
Progress: TypeAlias = "bool | Callable[[BatchProgress], object] | None"


@dataclass(frozen=True)
class BatchProgress:
    """Where a batch stands, handed to a ``progress=`` callback after each response."""

    #: Responses received so far (failures included).
    done: int
    #: How many inputs there are, when known (``len(inputs)``); ``None`` for a generator.
    total: int | None
    #: Failed responses among ``done``.
    errors: int
    #: Seconds since the batch started.
    elapsed: float

    @property
    def rate(self) -> float:
        """Responses per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until the last response at the rate so far; ``None`` when the total is unknown."""
        if self.total is None:
            return None
        left = max(self.total - self.done, 0)
        if not left:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None


# -- the public functions ------------------------------------------------------------------


def generate_batch_sync(
    inputs: Iterable[BatchInput],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    concurrency: int = 8,
    progress: Progress = None,
    **options: Any,
) -> list[LLMResponse]:
    """One ``LLMResponse`` per input, in input order, failures (bad inputs included) in their
    slots. At most ``concurrency`` requests at a time, from a pool of as many worker threads.
    Ctrl-C raises ``KeyboardInterrupt`` at once and sends nothing more; to keep the responses
    received until then, iterate ``iter_batch_sync`` instead."""
    results = _Slots()
    for index, response in iter_batch_sync(
        inputs, model_name, temperature, max_tokens, backend=backend, concurrency=concurrency, progress=progress,
        **options,
    ):  # fmt: skip
        results.put(index, response)
    return results.list()


async def generate_batch_async(
    inputs: Iterable[BatchInput],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    concurrency: int = 8,
    progress: Progress = None,
    **options: Any,
) -> list[LLMResponse]:
    """Async twin of ``generate_batch_sync``: on the running event loop, at most ``concurrency``
    tasks at a time and no thread per request. Cancelling the awaiting task cancels the requests
    in flight (their connections are closed) and raises ``CancelledError``, as asyncio requires;
    to keep the responses received until then, iterate ``iter_batch_async`` instead."""
    results = _Slots()
    batch = iter_batch_async(
        inputs, model_name, temperature, max_tokens, backend=backend, concurrency=concurrency, progress=progress,
        **options,
    )  # fmt: skip
    async with contextlib.aclosing(batch):
        async for index, response in batch:
            results.put(index, response)
    return results.list()


def iter_batch_sync(
    inputs: Iterable[BatchInput],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    concurrency: int = 8,
    progress: Progress = None,
    **options: Any,
) -> Iterator[tuple[int, LLMResponse]]:
    """``(index, response)`` for each input, as they complete (not in order); ``index`` is the
    input's position in ``inputs``. At most ``concurrency`` inputs are read ahead of the
    responses handed out, so a generator of any length runs in bounded memory.

    Leaving the loop (``break``, an exception, Ctrl-C) sends nothing more: inputs not yet started
    are dropped, and the requests already in flight (at most ``concurrency``; a thread cannot be
    interrupted) end in the background within their timeout, their responses discarded."""
    limit, reporter = _checked(inputs, concurrency, progress)
    arguments = (model_name, temperature, max_tokens)

    def call(item: object) -> LLMResponse:
        if isinstance(item, str):
            return generate_completion_sync(item, *arguments, backend=backend, **options)
        return generate_completion_with_messages_sync(item, *arguments, backend=backend, **options)  # type: ignore[arg-type]

    return run_sync(enumerate(inputs), call, limit, reporter)


def iter_batch_async(
    inputs: Iterable[BatchInput],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    concurrency: int = 8,
    progress: Progress = None,
    **options: Any,
) -> AsyncGenerator[tuple[int, LLMResponse], None]:
    """Async twin of ``iter_batch_sync`` (an async generator, not a coroutine)::

        async with contextlib.aclosing(iter_batch_async(prompts, concurrency=64)) as batch:
            async for index, response in batch:
                ...

    Leaving the loop or cancelling the task cancels the requests in flight and waits for them
    to end (their connections closed); nothing more is sent. ``aclosing`` makes that happen at
    once on ``break``; without it, when the generator is collected."""
    limit, reporter = _checked(inputs, concurrency, progress)
    arguments = (model_name, temperature, max_tokens)

    async def call(item: object) -> LLMResponse:
        if isinstance(item, str):
            return await generate_completion_async(item, *arguments, backend=backend, **options)
        return await generate_completion_with_messages_async(item, *arguments, backend=backend, **options)  # type: ignore[arg-type]

    return run_async(enumerate(inputs), call, limit, reporter)


def _checked(inputs: object, concurrency: object, progress: object) -> tuple[int, Callable[[], Reporter]]:
    """The concurrency, and what makes the batch's progress reporter; the batch's own arguments
    checked up front (a mistake in them is the program's, not an input's: it raises)."""
    if isinstance(inputs, (str, bytes)):
        raise InvalidInputError("inputs is one string: pass an iterable of prompts, e.g. [prompt].")
    if not isinstance(inputs, Iterable):
        raise InvalidInputError(f"inputs must be an iterable of prompts and messages, got {type(inputs).__name__}.")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidInputError(f"concurrency must be a whole number of at least 1, got {concurrency!r}.")
    total = len(inputs) if isinstance(inputs, Sized) else None
    return concurrency, reporter(progress, total)


# -- the engines -----------------------------------------------------------------------------


async def run_async(
    items: Iterable[tuple[int, object]],
    call: Callable[[object], Awaitable[LLMResponse]],
    limit: int,
    make_reporter: Callable[[], Reporter],
) -> AsyncGenerator[tuple[int, LLMResponse], None]:
    """``(index, call(item))`` for each ``(index, item)``, as they complete, with at most
    ``limit`` calls in flight, each its own task on the running loop."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Queue[asyncio.Task[tuple[int, LLMResponse]]] = asyncio.Queue()
    running: set[asyncio.Task[tuple[int, LLMResponse]]] = set()
    source = iter(items)
    reporter = make_reporter()

    async def one(index: int, item: object) -> tuple[int, LLMResponse]:
        start = time.perf_counter()
        try:
            return index, await call(item)
        except Exception as exc:  # the per-call functions never raise: a net, so that no slot is lost
            return index, failed(as_chatplug_error(exc, "chatplug batch"), None, start)

    def start_next() -> bool:
        for index, item in source:  # one at a time: the source is read only as far as needed
            task = loop.create_task(one(index, item))
            running.add(task)
            task.add_done_callback(finished.put_nowait)
            return True
        return False

    try:
        more = True
        while more and len(running) < limit:
            more = start_next()
        while running:
            task = await finished.get()
            running.discard(task)
            index, response = task.result()
            if more:
                more = start_next()
            reporter.update(response)
            yield index, response
    finally:
        try:
            if running:  # left early (break, cancel, an error): end what is in flight, and wait for it
                for task in running:
                    task.cancel()
                await asyncio.wait(running)
        finally:
            reporter.close()


def run_sync(
    items: Iterable[tuple[int, object]],
    call: Callable[[object], LLMResponse],
    limit: int,
    make_reporter: Callable[[], Reporter],
) -> Iterator[tuple[int, LLMResponse]]:
    """``run_async`` on threads: at most ``limit`` workers, each calling ``call`` on one item at
    a time. The caller's thread reads the items and hands out the results (and so runs the
    progress callback): neither the source nor the callback need be thread-safe."""
    pool = _Workers(call, limit)
    source = iter(items)
    reporter = make_reporter()
    try:
        more = True
        while more and pool.in_flight < limit:
            more = pool.submit(source)
        while pool.in_flight:
            index, response = pool.next_result()
            if more:
                more = pool.submit(source)
            reporter.update(response)
            yield index, response
    finally:
        pool.stop()
        reporter.close()


_STOP = object()


class _Workers:
    """Daemon threads taking ``(index, item)`` jobs, started as needed up to ``limit``. Daemons:
    a request in flight when the batch is left (Ctrl-C) must not keep the process alive."""

    def __init__(self, call: Callable[[object], LLMResponse], limit: int) -> None:
        self.call, self.limit = call, limit
        self.jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[int, LLMResponse]] = queue.SimpleQueue()
        self.threads = 0
        self.in_flight = 0
        self.stopped = False

    def submit(self, source: Iterator[tuple[int, object]]) -> bool:
        """Hand the next item of ``source`` to a worker; ``False`` when there is none."""
        for job in source:
            if self.threads < self.limit:
                threading.Thread(target=self._work, name=f"chatplug-batch-{self.threads}", daemon=True).start()
                self.threads += 1
            self.in_flight += 1
            self.jobs.put(job)
            return True
        return False

    def next_result(self) -> tuple[int, LLMResponse]:
        result = self.results.get()  # Ctrl-C interrupts this wait (a lock acquire) at once
        self.in_flight -= 1
        return result

    def stop(self) -> None:
        """Start nothing more; each worker ends after its current request."""
        self.stopped = True
        for _ in range(self.threads):
            self.jobs.put(_STOP)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is _STOP or self.stopped:
                return
            index, item = cast("tuple[int, object]", job)
            start = time.perf_counter()
            try:
                response = self.call(item)
            except Exception as exc:  # the per-call functions never raise: a net, so that no slot is lost
                response = failed(as_chatplug_error(exc, "chatplug batch"), None, start)
            self.results.put((index, response))


class _Slots:
    """Responses by index, for the list forms: the indices come at most ``concurrency`` apart."""

    def __init__(self) -> None:
        self.items: list[LLMResponse | None] = []

    def put(self, index: int, response: LLMResponse) -> None:
        if index >= len(self.items):
            self.items.extend([None] * (index + 1 - len(self.items)))
        self.items[index] = response

    def list(self) -> list[LLMResponse]:
        assert all(item is not None for item in self.items)
        return self.items  # type: ignore[return-value]


# -- progress ----------------------------------------------------------------------------------


class Reporter:
    """Counts responses; the subclasses show them. This one shows nothing."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.done = 0
        self.errors = 0
        self.start = time.perf_counter()

    def update(self, response: LLMResponse) -> None:
        self.done += 1
        if not response.success:
            self.errors += 1

    def close(self) -> None:
        pass

    def snapshot(self) -> BatchProgress:
        return BatchProgress(self.done, self.total, self.errors, time.perf_counter() - self.start)


class _Callback(Reporter):
    def __init__(self, total: int | None, callback: Callable[[BatchProgress], object]) -> None:
        super().__init__(total)
        self.callback = callback

    def update(self, response: LLMResponse) -> None:
        super().update(response)
        self.callback(self.snapshot())


class _Bar(Reporter):
    """tqdm's bar on stderr: done/total, rate, ETA, and the errors as its postfix."""

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

        self.bar = tqdm(total=total, desc="chatplug batch", unit="req", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix(errors=0, refresh=False)
        self.shown_errors = 0

    def update(self, response: LLMResponse) -> None:
        super().update(response)
        if self.errors != self.shown_errors:
            self.shown_errors = self.errors
            self.bar.set_postfix(errors=self.errors, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _Line(Reporter):
    """Without tqdm: one stderr line, rewritten at most ten times a second."""

    INTERVAL = 0.1

    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.shown = 0.0
        self.width = 0
        self._show()

    def update(self, response: LLMResponse) -> None:
        super().update(response)
        now = time.perf_counter()
        if now - self.shown >= self.INTERVAL:
            self.shown = now
            self._show()

    def close(self) -> None:
        self._show()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _show(self) -> None:
        state = self.snapshot()
        eta = state.eta
        text = (
            f"chatplug batch: {state.done}{f'/{state.total}' if state.total is not None else ''} done, "
            f"{state.errors} errors, {state.rate:.1f}/s" + (f", ETA {_duration(eta)}" if eta is not None else "")
        )
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def reporter(progress: object, total: int | None) -> Callable[[], Reporter]:
    """What makes the reporter ``progress=`` asks for, when the batch starts: ``None`` a bar when
    stderr is a terminal, ``True`` a bar, ``False`` nothing, a callable called with a
    ``BatchProgress`` after each response."""
    if progress is None or isinstance(progress, bool):
        if not (_is_terminal() if progress is None else progress):
            return lambda: Reporter(total)
        return lambda: _bar(total)
    if callable(progress):
        callback = progress
        return lambda: _Callback(total, callback)
    raise InvalidInputError(f"progress must be None, True, False or a function of BatchProgress, got {progress!r}.")


def _bar(total: int | None) -> Reporter:
    try:
        return _Bar(total)
    except ImportError:  # tqdm comes with the `batch` extra
        return _Line(total)


def _is_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False
