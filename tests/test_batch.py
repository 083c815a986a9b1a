"""Batches: generate_batch_sync/async and iter_batch_sync/async, and `chatplug batch` with resume.

Every wait is on an event the test or the backend sets; nothing sleeps to synchronise."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import chatplug
from chatplug import (
    BatchProgress,
    ChatBackend,
    ChatRequest,
    ChatResult,
    ErrorKind,
    InvalidInputError,
    ServerError,
    generate_batch_async,
    generate_batch_sync,
    hookimpl,
    iter_batch_async,
    iter_batch_sync,
)
from chatplug.testing import echo, scripted

from .conftest import ollama_reply
from .fakeserver import FakeServer

# -- a backend that holds its requests: how many are in flight at once, and when they end ----------


class Gate:
    """Requests held until ``opens_at`` of them are in flight at once (then all go on, unless
    ``hold``: then only cancelling ends them), or, async, each until the event of its prompt is
    set. Counts those in flight, the most at once, and the cancelled ones."""

    def __init__(self, opens_at: int | None = None, hold: bool = False) -> None:
        self.opens_at, self.hold = opens_at, hold
        self.lock = threading.Lock()
        self.in_flight = self.most = self.cancelled = 0
        self.open = threading.Event()
        self.async_full = asyncio.Event()
        self.async_open = asyncio.Event()
        self.by_prompt: dict[str, asyncio.Event] = {}

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            if self.in_flight == self.opens_at:
                self.async_full.set()
                if not self.hold:
                    self.open.set()
                    self.async_open.set()

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


def gated(gate: Gate) -> Iterator[str]:
    class Gated(ChatBackend):
        default_model = "gated-1"

        def complete(self, request: ChatRequest) -> ChatResult:
            gate.enter()
            try:
                assert gate.open.wait(10)
                return ChatResult(echo(request), request.model)
            finally:
                gate.leave()

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            gate.enter()
            try:
                prompt = echo(request)
                await gate.by_prompt.get(prompt, gate.async_open).wait()
                return ChatResult(prompt, request.model)
            except asyncio.CancelledError:
                gate.cancelled += 1
                raise
            finally:
                gate.leave()

    class Plugin:
        @hookimpl
        def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
            register("gated", Gated)

    name = chatplug.register_plugin(Plugin(), "gated-plugin")
    try:
        yield "gated"
    finally:
        chatplug.unregister_plugin(name)


@pytest.fixture
def gate(request: pytest.FixtureRequest) -> Gate:
    return Gate(*getattr(request, "param", ()))


@pytest.fixture
def gated_backend(gate: Gate) -> Iterator[str]:
    yield from gated(gate)


class Counted:
    """A generator of prompts that counts how many were read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        for i in range(self.count):
            self.read += 1
            yield f"prompt {i}"


def batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chatplug-batch-")]


# -- results: one per input, in order, failures and bad inputs in their slots ------------------------


def test_sync_results_come_in_input_order_failures_in_their_slots() -> None:
    def reply(request: ChatRequest) -> str | ServerError:
        return ServerError("boom") if echo(request).startswith("fail") else echo(request).upper()

    with scripted(default=reply) as llm:
        inputs = ["a", "fail 1", [{"role": "user", "content": "b"}], "c", "fail 2"]
        results = generate_batch_sync(inputs, concurrency=3, progress=False)
    assert [r.content for r in results] == ["A", "", "B", "C", ""]
    assert [r.success for r in results] == [True, False, True, True, False]
    assert results[1].error_kind is ErrorKind.SERVER and "boom" in str(results[1].error)
    assert len(llm.requests) == 5


def test_bad_inputs_fail_in_their_slots_and_send_nothing() -> None:
    bad: list[Any] = [5, None, [], [{"role": "nope", "content": "x"}], "", {"role": "user", "content": "x"}]
    with scripted() as llm:
        results = generate_batch_sync(["first", *bad, "last"], progress=False)
        async_results = asyncio.run(generate_batch_async(["first", *bad, "last"], progress=False))
    for batch in (results, async_results):
        assert len(batch) == 8
        assert (batch[0].content, batch[-1].content) == ("first", "last")
        assert all(not r.success and r.error_kind is ErrorKind.INVALID_INPUT for r in batch[1:-1])
    assert sorted(llm.prompts) == ["first", "first", "last", "last"]


def test_async_order_is_kept_when_completions_come_in_reverse(gate: Gate, gated_backend: str) -> None:
    prompts = ["a", "b", "c", "d"]

    gate.by_prompt = {p: asyncio.Event() for p in prompts}
    gate.opens_at, gate.hold = 4, True

    async def main() -> tuple[list[int], list[str]]:
        completed: list[int] = []

        async def consume() -> list[chatplug.LLMResponse]:
            results: list[chatplug.LLMResponse | None] = [None] * 4
            async for index, response in iter_batch_async(prompts, backend=gated_backend, concurrency=4):
                completed.append(index)
                results[index] = response
            return [r for r in results if r is not None]

        task = asyncio.create_task(consume())
        await gate.async_full.wait()
        for prompt in reversed(prompts):
            gate.by_prompt[prompt].set()
        listed = await generate_batch_async(prompts, backend=gated_backend, concurrency=4)  # all released now
        assert [r.content for r in listed] == prompts
        return completed, [r.content for r in await task]

    completed, contents = asyncio.run(main())
    assert completed == [3, 2, 1, 0]  # out of order as they came...
    assert contents == prompts  # ...and each where its index says


def test_sync_order_is_kept_whatever_the_completion_order() -> None:
    release = {p: threading.Event() for p in "abcd"}
    order: list[str] = []

    def reply(request: ChatRequest) -> str:
        prompt = echo(request)
        if prompt == "d":  # the last one started releases the others, in reverse
            for later in "cba":
                release[later].set()
        else:
            assert release[prompt].wait(10)
        order.append(prompt)
        return prompt

    with scripted(default=reply):
        streamed = list(iter_batch_sync(list("abcd"), concurrency=4, progress=False))
    assert sorted(index for index, _ in streamed) == [0, 1, 2, 3]
    assert order[0] == "d"
    assert all(response.content == "abcd"[index] for index, response in streamed)


def test_against_the_fake_ollama_server(ollama: FakeServer) -> None:
    results = generate_batch_sync([f"q{i}" for i in range(12)], concurrency=4, progress=False)
    assert all(r.success and r.content.startswith("Rayleigh") for r in results)
    async_results = asyncio.run(generate_batch_async([f"q{i}" for i in range(12)], concurrency=4, progress=False))
    assert all(r.success for r in async_results)
    sent = sorted(request.json()["messages"][0]["content"] for request in ollama.requests)
    assert sent == sorted([f"q{i}" for i in range(12)] * 2)


def test_options_reach_every_request() -> None:
    with scripted() as llm:
        generate_batch_sync(["a", "b"], "m1", 0.2, 7, seed=3, progress=False)
    assert {(r.model, r.temperature, r.max_tokens, r.options["seed"]) for r in llm.requests} == {("m1", 0.2, 7, 3)}


def test_the_batch_arguments_are_checked_up_front() -> None:
    with pytest.raises(InvalidInputError, match="one string"):
        generate_batch_sync("not a list")
    with pytest.raises(InvalidInputError, match="concurrency"):
        generate_batch_sync(["a"], concurrency=0)
    with pytest.raises(InvalidInputError, match="iterable"):
        iter_batch_async(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="progress"):
        iter_batch_sync(["a"], progress="yes")  # type: ignore[arg-type]


def test_an_empty_batch() -> None:
    assert generate_batch_sync([], progress=False) == []
    assert asyncio.run(generate_batch_async(iter([]), progress=False)) == []


# -- concurrency ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [(3,)], indirect=True)
def test_async_concurrency_is_bounded(gate: Gate, gated_backend: str) -> None:
    async def main() -> list[chatplug.LLMResponse]:
        return await generate_batch_async(Counted(20), backend=gated_backend, concurrency=3, progress=False)

    results = asyncio.run(main())
    assert gate.most == 3 and all(r.success for r in results) and len(results) == 20


@pytest.mark.parametrize("gate", [(50,)], indirect=True)
def test_async_batches_use_no_threads(gate: Gate, gated_backend: str) -> None:
    async def main() -> set[str]:
        before = {t.name for t in threading.enumerate()}
        task = asyncio.create_task(generate_batch_async(Counted(50), backend=gated_backend, concurrency=50))
        await gate.async_full.wait()  # 50 requests in flight at once
        during = {t.name for t in threading.enumerate()} - before
        await task
        return during

    assert asyncio.run(main()) <= {"asyncio_0"}  # at most the loop's one worker, for the backend's first use


@pytest.mark.parametrize("gate", [(4,)], indirect=True)
def test_sync_concurrency_is_bounded_by_a_pool_of_threads(gate: Gate, gated_backend: str) -> None:
    results = generate_batch_sync(Counted(30), backend=gated_backend, concurrency=4, progress=False)
    assert gate.most == 4 and len(results) == 30 and all(r.success for r in results)
    assert len({r.content for r in results}) == 30


# -- bounded memory: the iterator forms read only as far as they must -----------------------------------


def test_the_async_iterator_reads_at_most_concurrency_ahead() -> None:
    source = Counted(100_000)
    limit = 16
    ahead = 0

    async def main() -> int:
        nonlocal ahead
        received = 0
        async for _ in iter_batch_async(source, concurrency=limit, progress=False):
            received += 1
            ahead = max(ahead, source.read - received)
        return received

    with scripted(default="ok") as llm:  # (its record of the requests: ~90 MB, dropped after the test)
        assert asyncio.run(main()) == 100_000
        assert len(llm.requests) == 100_000
    assert ahead <= limit  # never more than `concurrency` inputs read ahead of the results


def test_the_sync_iterator_reads_at_most_concurrency_ahead() -> None:
    source = Counted(5_000)
    received = ahead = 0
    with scripted(default="ok"):
        for _ in iter_batch_sync(source, concurrency=8, progress=False):
            received += 1
            ahead = max(ahead, source.read - received)
    assert received == 5_000 and ahead <= 8


# -- leaving early ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [(4, True)], indirect=True)  # held: only cancelling ends them
def test_cancelling_an_async_batch_cancels_its_requests_and_leaves_no_task(gate: Gate, gated_backend: str) -> None:
    source = Counted(1_000)

    async def main() -> set[asyncio.Task[Any]]:
        task = asyncio.create_task(generate_batch_async(source, backend=gated_backend, concurrency=4))
        await gate.async_full.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]

    assert asyncio.run(main()) == set()
    assert (gate.cancelled, gate.in_flight, source.read) == (4, 0, 4)


def test_breaking_out_of_the_async_iterator_sends_nothing_more() -> None:
    source = Counted(1_000)

    async def main() -> int:
        async with contextlib.aclosing(iter_batch_async(source, concurrency=4, progress=False)) as batch:
            async for _index, response in batch:
                assert response.success
                break
        return len(asyncio.all_tasks())

    with scripted() as llm:
        assert asyncio.run(main()) == 1  # main alone: the requests in flight ended with the loop
        sent = len(llm.requests)
    assert source.read <= 5 and sent <= source.read


def test_breaking_out_of_the_sync_iterator_sends_nothing_more() -> None:
    source = Counted(1_000)
    with scripted() as llm:
        for _index, _response in iter_batch_sync(source, concurrency=4, progress=False):
            break
        for thread in batch_threads():
            thread.join(10)  # the workers end after the requests they had
        sent = len(llm.requests)
    assert source.read <= 5 and sent <= source.read
    assert batch_threads() == []


def test_an_interrupt_in_a_sync_batch_stops_it_and_its_workers() -> None:
    source = Counted(1_000)
    seen: list[int] = []

    def interrupt(state: BatchProgress) -> None:  # the main thread, where Ctrl-C lands
        seen.append(state.done)
        if state.done == 3:
            raise KeyboardInterrupt

    with scripted(), pytest.raises(KeyboardInterrupt):
        generate_batch_sync(source, concurrency=4, progress=interrupt)
    for thread in batch_threads():
        thread.join(10)
    assert seen == [1, 2, 3] and source.read <= 7 and batch_threads() == []


# -- progress --------------------------------------------------------------------------------------------------


def test_the_progress_callback_gets_each_response() -> None:
    seen: list[BatchProgress] = []
    with scripted(default=lambda r: ServerError("no") if echo(r) == "x" else "ok"):
        generate_batch_sync(["a", "x", "b", "x"], concurrency=1, progress=seen.append)
        streamed: list[BatchProgress] = []
        asyncio.run(generate_batch_async(iter(["a", "x"]), progress=streamed.append))
    assert [(p.done, p.total, p.errors) for p in seen] == [(1, 4, 0), (2, 4, 1), (3, 4, 1), (4, 4, 2)]
    assert seen[-1].eta == 0 and seen[-1].rate > 0 and seen[0].eta is not None
    assert [(p.done, p.total, p.errors, p.eta) for p in streamed] == [(1, None, 0, None), (2, None, 1, None)]


def test_a_bar_when_asked_nothing_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with scripted(default=lambda r: ServerError("no") if echo(r) == "x" else "ok"):
        generate_batch_sync(["a", "x", "b"], progress=None)  # pytest's stderr is no terminal
        assert capsys.readouterr().err == ""
        generate_batch_sync(["a", "x", "b"], progress=True)
        bar = capsys.readouterr().err
        assert "chatplug batch" in bar and "3/3" in bar and "errors=1" in bar and "req/s" in bar


def test_without_tqdm_a_bar_is_one_updating_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    with scripted(default=lambda r: ServerError("no") if echo(r) == "x" else "ok"):
        asyncio.run(generate_batch_async(["a", "x", "b"], progress=True))
    line = capsys.readouterr().err
    assert line.startswith("\rchatplug batch: 0/3 done") and line.endswith("\n")
    assert "3/3 done, 1 errors" in line and "/s, ETA 00:00" in line


def test_importing_chatplug_imports_no_batch_machinery() -> None:
    code = "import sys, chatplug; print('chatplug._extras.batch' in sys.modules, 'tqdm' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


# -- the command line, with resume ---------------------------------------------------------------------------


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "OLLAMA_"))}
    environ.update({"LLM_MAX_RETRIES": "0", **env})  # a failure is one request
    return subprocess.run(
        [sys.executable, "-m", "chatplug", "batch", *args], capture_output=True, text=True, env=environ, cwd=cwd,
        timeout=60,
    )  # fmt: skip


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


INPUTS = [
    '"first"',
    '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "second"}]',
    "",  # blank lines are no inputs
    '{"prompt": "third"}',
    '{"messages": [{"role": "user", "content": "fourth"}]}',
    '"fifth"',
]


def test_the_cli_answers_every_line_in_order(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join([*INPUTS, "not json", "42"]) + "\n")
    proc = cli("in.jsonl", "-o", "out.jsonl", "--concurrency", "3", cwd=tmp_path, LLM_BACKEND="testing")
    assert proc.returncode == 1  # the two bad lines
    assert "2 of 7 inputs failed" in proc.stderr and "Traceback" not in proc.stderr
    out = lines(tmp_path / "out.jsonl")
    assert [o["index"] for o in out] == list(range(7))
    assert [o["content"] for o in out[:5]] == ["first", "second", "third", "fourth", "fifth"]
    assert [o["error_kind"] for o in out[5:]] == ["invalid_input", "invalid_input"]
    assert "line 7 is not JSON" in out[5]["error"] and "got 42" in out[6]["error"]
    assert list(out[0])[:7] == ["index", "content", "tokens_used", "response_time", "model_used", "success", "error"]


def test_the_cli_resumes_sending_only_what_is_missing(tmp_path: Path, ollama: FakeServer) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(INPUTS) + "\n")
    failure = ollama_reply("error_internal_500.json", 500)
    ok = ollama_reply("chat_nonstream_200.json")
    ollama.route("POST", "/api/chat", failure, failure, ok)  # the first two requests fail
    args = ("in.jsonl", "-o", "out.jsonl", "--concurrency", "1", "--model", "llama3.2")
    first = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert first.returncode == 1 and "2 of 5 inputs failed" in first.stderr and "run the same command" in first.stderr
    assert [o["success"] for o in lines(tmp_path / "out.jsonl")] == [False, False, True, True, True]
    partial = tmp_path / "out.jsonl.partial"
    assert partial.exists() and len(ollama.requests) == 5

    with partial.open("a") as file:  # as a kill mid-write leaves it
        file.write('{"index": 4, "content": "cut sh')
    second = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert second.returncode == 0, second.stderr
    assert "3 of 5 inputs answered by an earlier run; sending the other 2" in second.stderr
    resent = [request.json()["messages"][-1]["content"] for request in ollama.requests[5:]]
    assert resent == ["first", "second"]  # only the missing ones
    out = lines(tmp_path / "out.jsonl")
    assert [o["index"] for o in out] == list(range(5)) and all(o["success"] for o in out)
    assert len(partial.read_text().splitlines()) == 1  # only the header naming the job is kept

    third = cli(*args, "--model", "other", cwd=tmp_path, OLLAMA_HOST=ollama.url)  # done, but another job
    assert third.returncode == 2 and len(ollama.requests) == 7
    fourth = cli(*args, "--model", "other", "--restart", cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert fourth.returncode == 0 and len(ollama.requests) == 12


def test_an_interrupted_run_keeps_what_it_received(tmp_path: Path, ollama: FakeServer) -> None:
    """A run killed midway: its partial file holds the responses received, and the rerun sends the rest."""
    (tmp_path / "in.jsonl").write_text("\n".join(INPUTS) + "\n")
    args = ("in.jsonl", "-o", "out.jsonl", "--concurrency", "2")
    assert cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url).returncode == 0
    # The partial file as a run stopped after the responses to inputs 1 and 3 left it.
    out = (tmp_path / "out.jsonl").read_text().splitlines()
    header = {"chatplug_batch": {"input": _sha256(tmp_path / "in.jsonl"), "lines": 5, "backend": None,
                                 "model": None, "temperature": None, "max_tokens": None}}  # fmt: skip
    (tmp_path / "out.jsonl.partial").write_text("\n".join([json.dumps(header), out[1], out[3]]) + "\n")
    (tmp_path / "out.jsonl").unlink()
    before = len(ollama.requests)
    proc = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r.json()["messages"][-1]["content"] for r in ollama.requests[before:]) == ["fifth", "first", "third"]
    rerun = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in rerun] == list(range(5))
    assert (rerun[1], rerun[3]) == (out[1], out[3])  # kept as received, not sent again


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_cli_refuses_to_mix_two_jobs(tmp_path: Path, ollama: FakeServer) -> None:
    (tmp_path / "in.jsonl").write_text('"a"\n"b"\n')
    ollama.route("POST", "/api/chat", ollama_reply("error_internal_500.json", 500))
    assert cli("in.jsonl", "-o", "out.jsonl", cwd=tmp_path, OLLAMA_HOST=ollama.url).returncode == 1
    other = cli("in.jsonl", "-o", "out.jsonl", "--temperature", "0", cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert other.returncode == 2 and "names another job: --temperature" in other.stderr
    (tmp_path / "in.jsonl").write_text('"a"\n"c"\n')
    changed = cli("in.jsonl", "-o", "out.jsonl", cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert changed.returncode == 2 and len(ollama.requests) == 2


# -- a rerun pays for nothing twice: the output remembers what was answered -----------------------------


def sent(ollama: FakeServer, since: int = 0) -> list[str]:
    """The last user message of each request the server got after the first ``since``."""
    return [request.json()["messages"][-1]["content"] for request in ollama.requests[since:]]


def without_time(line: bytes) -> dict[str, Any]:
    """A response line without its ``response_time``, the one field that differs between two sends."""
    record: dict[str, Any] = json.loads(line)
    del record["response_time"]
    return record


JOB = ("in.jsonl", "-o", "out.jsonl", "--model", "llama3.2", "--temperature", "0")


def finished_job(tmp_path: Path, ollama: FakeServer) -> bytes:
    """The five INPUTS answered into out.jsonl; its bytes."""
    (tmp_path / "in.jsonl").write_text("\n".join(INPUTS) + "\n")
    proc = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0 and len(ollama.requests) == 5, proc.stderr
    return (tmp_path / "out.jsonl").read_bytes()


def test_a_finished_job_run_again_sends_nothing_and_leaves_the_output_as_it_was(
    tmp_path: Path, ollama: FakeServer
) -> None:
    first = finished_job(tmp_path, ollama)
    again = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert again.returncode == 0, again.stderr
    assert len(ollama.requests) == 5
    assert "all 5 inputs answered by an earlier run; nothing sent" in again.stderr
    assert hashlib.sha256((tmp_path / "out.jsonl").read_bytes()).digest() == hashlib.sha256(first).digest()
    # The kept record is one line: the job's name, not a second copy of the responses.
    assert len((tmp_path / "out.jsonl.partial").read_bytes().splitlines()) == 1


def test_lines_deleted_from_the_output_are_the_only_inputs_sent_again(tmp_path: Path, ollama: FakeServer) -> None:
    first = finished_job(tmp_path, ollama).splitlines(keepends=True)
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(line for number, line in enumerate(first) if number not in (1, 3)))
    proc = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0, proc.stderr
    assert sorted(sent(ollama, 5)) == ["fourth", "second"]  # inputs 1 and 3, nothing else
    assert "3 of 5 inputs answered by an earlier run; sending the other 2" in proc.stderr
    rerun = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["index"] for line in rerun] == list(range(5))
    assert [rerun[i] for i in (0, 2, 4)] == [first[i] for i in (0, 2, 4)]  # byte for byte
    assert [without_time(rerun[i]) for i in (1, 3)] == [without_time(first[i]) for i in (1, 3)]

    # Lines put out of order are put back in order, and nothing is sent for them.
    out.write_bytes(b"".join(reversed(rerun)))
    reordered = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert reordered.returncode == 0 and len(ollama.requests) == 7
    assert out.read_bytes() == b"".join(rerun)


def test_only_the_failed_inputs_are_sent_again_then_nothing(tmp_path: Path, ollama: FakeServer) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(INPUTS) + "\n")
    ok, failure = ollama_reply("chat_nonstream_200.json"), ollama_reply("error_internal_500.json", 500)
    ollama.route("POST", "/api/chat", ok, failure, ok, failure, ok)  # inputs 1 and 3 fail (one at a time)
    args = (*JOB, "--concurrency", "1")
    first = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert first.returncode == 1 and "2 of 5 inputs failed" in first.stderr
    out = tmp_path / "out.jsonl"
    before = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["success"] for line in before] == [True, False, True, False, True]
    # The failures are read from the output itself: the partial file keeps only the job's name.
    assert len((tmp_path / "out.jsonl.partial").read_bytes().splitlines()) == 1

    second = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert second.returncode == 0, second.stderr
    assert sent(ollama, 5) == ["second", "fourth"]
    after = out.read_bytes()
    assert [json.loads(line)["success"] for line in after.splitlines()] == [True] * 5
    assert [after.splitlines(keepends=True)[i] for i in (0, 2, 4)] == [before[i] for i in (0, 2, 4)]

    third = cli(*args, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert third.returncode == 0 and len(ollama.requests) == 7 and out.read_bytes() == after


def test_another_input_or_other_options_are_refused_and_the_output_left_alone(
    tmp_path: Path, ollama: FakeServer
) -> None:
    first = finished_job(tmp_path, ollama)
    out = tmp_path / "out.jsonl"
    model = cli(*JOB, "--model", "phi3", cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert model.returncode == 2
    assert "--model (or LLM_MODEL_NAME) was 'llama3.2', now 'phi3'" in model.stderr and "--restart" in model.stderr
    environment = cli("in.jsonl", "-o", "out.jsonl", "--temperature", "0", cwd=tmp_path, OLLAMA_HOST=ollama.url,
                      LLM_MODEL_NAME="phi3")  # fmt: skip
    assert environment.returncode == 2 and "now 'phi3'" in environment.stderr
    (tmp_path / "in.jsonl").write_text("\n".join([*INPUTS, '"sixth"']) + "\n")
    changed = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert changed.returncode == 2 and "the input file is not the one it answers (5 inputs" in changed.stderr
    assert "now 6" in changed.stderr
    assert len(ollama.requests) == 5 and out.read_bytes() == first

    restarted = cli(*JOB, "--restart", cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert restarted.returncode == 0, restarted.stderr
    assert len(ollama.requests) == 11 and len(out.read_bytes().splitlines()) == 6


def test_an_output_the_job_cannot_vouch_for_is_refused(tmp_path: Path, ollama: FakeServer) -> None:
    """An output without its partial file (whose job is unknown), or with a line that is no response
    of the job: rewriting it would drop or mix answers, so nothing is sent and it is left alone."""
    first = finished_job(tmp_path, ollama)
    out = tmp_path / "out.jsonl"
    out.write_bytes(first + b'{"note": "checked by hand"}\n')
    stray = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert stray.returncode == 2 and "out.jsonl line 6 is no response to one of the 5 inputs" in stray.stderr
    out.write_bytes(first + first.splitlines(keepends=True)[2])
    twice = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert twice.returncode == 2 and "two responses to input 2" in twice.stderr
    out.write_bytes(first)
    (tmp_path / "out.jsonl.partial").unlink()
    unknown = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert unknown.returncode == 2 and "out.jsonl exists, but out.jsonl.partial, which names" in unknown.stderr
    assert not (tmp_path / "out.jsonl.partial").exists()
    (tmp_path / "out.jsonl.partial").write_bytes(b"")  # as a kill before its header was written leaves it
    assert cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url).returncode == 2
    assert len(ollama.requests) == 5 and out.read_bytes() == first


def test_a_rerun_interrupted_after_lines_were_deleted_resumes_from_both_files(
    tmp_path: Path, ollama: FakeServer
) -> None:
    """Inputs 1 and 3 deleted from the output, then a rerun killed after input 3's response
    arrived: the output is as it was, the partial file holds that response; the next run sends
    input 1 only and writes all five in order."""
    first = finished_job(tmp_path, ollama).splitlines(keepends=True)
    out, partial = tmp_path / "out.jsonl", tmp_path / "out.jsonl.partial"
    out.write_bytes(b"".join(line for number, line in enumerate(first) if number not in (1, 3)))
    received = json.loads(first[3]) | {"response_time": 9.5}
    with partial.open("ab") as file:
        file.write(json.dumps(received).encode() + b"\n")
    proc = cli(*JOB, cwd=tmp_path, OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0, proc.stderr
    assert sent(ollama, 5) == ["second"]
    rerun = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["index"] for line in rerun] == list(range(5))
    assert json.loads(rerun[3]) == received and [rerun[i] for i in (0, 2, 4)] == [first[i] for i in (0, 2, 4)]
    assert len(partial.read_bytes().splitlines()) == 1


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('"a"\n')
    for args in (("in.jsonl",), ("missing.jsonl", "-o", "out.jsonl"), ("in.jsonl", "-o", "o", "--concurrency", "0")):
        proc = cli(*args, cwd=tmp_path, LLM_BACKEND="testing")
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    bad = cli("in.jsonl", "-o", "out.jsonl", cwd=tmp_path, LLM_BACKEND="testing", LLM_TEMPERATURE="hot")
    assert bad.returncode == 2 and "LLM_TEMPERATURE='hot' is not valid" in bad.stderr  # before anything is sent
    assert not (tmp_path / "out.jsonl").exists()


def test_an_empty_input_file(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("\n")
    proc = cli("in.jsonl", "-o", "out.jsonl", cwd=tmp_path, LLM_BACKEND="testing")
    assert proc.returncode == 0 and (tmp_path / "out.jsonl").read_text() == ""
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 1
    again = cli("in.jsonl", "-o", "out.jsonl", cwd=tmp_path, LLM_BACKEND="testing")
    assert again.returncode == 0 and (tmp_path / "out.jsonl").read_text() == ""
