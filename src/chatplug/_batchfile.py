"""``chatplug batch IN.jsonl -o OUT.jsonl``: a file of inputs through the async batch engine,
resumable.

Each response is appended to ``OUT.jsonl.partial`` as it arrives (flushed, so a Ctrl-C or a
kill loses none that arrived). A rerun reads that file and sends only the inputs with no
successful response in it. When the run ends, ``OUT.jsonl`` is written from it in input order;
the partial file is then removed if every input succeeded, and kept otherwise, so that the next
run retries just the failed ones.

The partial file starts with a header naming the job (the input's SHA-256 and the options that
change the answers): a rerun with another input or other options refuses to mix the two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ._api import generate_completion_async, generate_completion_with_messages_async
from ._batch import reporter, run_async
from ._exceptions import InvalidInputError
from ._response import failed
from ._types import LLMResponse

HEADER = "chatplug_batch"


class UsageError(Exception):
    """A mistake in the command: exit status 2."""


class Invalid:
    """An input line that is no input; its response is a failure, and nothing is sent."""

    def __init__(self, message: str) -> None:
        self.message = message


def parser() -> argparse.ArgumentParser:
    from .cli import _positive, _temperature

    parser = argparse.ArgumentParser(
        prog="chatplug batch",
        description="Send every input of a JSONL file and write one response per line, in input order. Each "
        'input line is a JSON string (a prompt), a JSON list of messages, or {"prompt": ...} or {"messages": '
        "[...]}. Interrupted or partly failed? Run the same command again: only the inputs without a "
        "successful response are sent.",
    )
    parser.add_argument("input", type=Path, help="the JSONL file of inputs")
    parser.add_argument("--output", "-o", type=Path, required=True, help="the JSONL file of responses to write")
    parser.add_argument("--concurrency", "-c", type=_positive, default=8, help="requests at a time (default: 8)")
    parser.add_argument("--backend", "-b", help="backend name (default: LLM_BACKEND or ollama)")
    parser.add_argument("--model", "-m", help="model name, optionally as backend:model")
    parser.add_argument("--temperature", "-t", type=_temperature, help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=_positive, help="most tokens to generate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    return parser


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        total, digest = _survey(args.input)
        job = {"input": digest, "lines": total, "backend": args.backend, "model": args.model,
               "temperature": args.temperature, "max_tokens": args.max_tokens}  # fmt: skip
        with _open_partial(partial, job) as (state, out):
            missing = total - state.succeeded
            if missing:
                _say(f"{state.succeeded} of {total} inputs answered by an earlier run; sending the other {missing}"
                     if state.succeeded else None)  # fmt: skip
                try:
                    asyncio.run(_send(args, _missing(args.input, state), missing, state, out))
                except KeyboardInterrupt:
                    _say(f"interrupted: {state.succeeded} of {total} answered, kept in {partial}; run the same "
                         "command again to send the rest")  # fmt: skip
                    return 130
    except UsageError as exc:
        _say(str(exc))
        return 2
    _write_output(args.output, partial, state)
    failures = total - state.succeeded
    if failures:
        _say(f"{failures} of {total} inputs failed (their errors are in {args.output}); run the same command again "
             "to retry just those")  # fmt: skip
        return 1
    partial.unlink()
    return 0


async def _send(args: argparse.Namespace, items: Iterator[tuple[int, object]], missing: int, state: State,
                out: IO[bytes]) -> None:  # fmt: skip
    arguments = (args.model, args.temperature, args.max_tokens)

    async def call(item: object) -> LLMResponse:
        if isinstance(item, Invalid):
            return failed(InvalidInputError(item.message), None, time.perf_counter(), args.model)
        if isinstance(item, str):
            return await generate_completion_async(item, *arguments, backend=args.backend)
        return await generate_completion_with_messages_async(item, *arguments, backend=args.backend)  # type: ignore[arg-type]

    progress = False if args.no_progress else None
    batch = run_async(items, call, args.concurrency, reporter(progress, missing))
    async with contextlib.aclosing(batch):
        async for index, response in batch:
            state.record(index, response.success, out.tell())
            out.write(json.dumps({"index": index, **response.to_dict()}, default=str).encode() + b"\n")
            out.flush()


def _survey(path: Path) -> tuple[int, str]:
    """The number of inputs in ``path`` (its non-blank lines) and its SHA-256."""
    digest = hashlib.sha256()
    count = 0
    try:
        with path.open("rb") as file:
            for line in file:
                digest.update(line)
                count += bool(line.strip())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return count, digest.hexdigest()


def _inputs(path: Path) -> Iterator[tuple[int, object]]:
    """``(index, input)`` for each non-blank line of ``path``, read as it is needed."""
    with path.open("rb") as file:
        index = 0
        for number, line in enumerate(file, 1):
            if line.strip():
                yield index, _parsed(line, number)
                index += 1


def _missing(path: Path, state: State) -> Iterator[tuple[int, object]]:
    return ((index, item) for index, item in _inputs(path) if not state.ok[index])


def _parsed(line: bytes, number: int) -> object:
    try:
        value = json.loads(line)
    except ValueError as exc:  # UnicodeDecodeError included
        return Invalid(f"line {number} is not JSON: {exc}")
    if isinstance(value, dict):
        given = [key for key in ("prompt", "messages") if key in value]
        if len(given) != 1:
            return Invalid(f'line {number}: an object needs one of "prompt" or "messages", got keys {sorted(value)}')
        value = value[given[0]]
        if given == ["messages"] and not isinstance(value, list):
            return Invalid(f'line {number}: "messages" must be a list of messages')
    if not isinstance(value, (str, list)):
        return Invalid(f"line {number}: an input is a prompt (a JSON string) or a list of messages, got {value!r}")
    return value


class State:
    """Where each input stands: the offset of its latest response in the partial file (-1: none
    yet) and whether it succeeded. Eight bytes and one per input, whatever the input's size."""

    def __init__(self, total: int) -> None:
        self.offsets = array("q", [-1]) * total
        self.ok = bytearray(total)
        self.succeeded = 0

    def record(self, index: int, success: bool, offset: int) -> None:
        self.offsets[index] = offset
        self.succeeded += success - self.ok[index]
        self.ok[index] = success


@contextlib.contextmanager
def _open_partial(path: Path, job: dict[str, Any]) -> Iterator[tuple[State, IO[bytes]]]:
    """The job's state from ``path`` (made with its header if new), and the file open to append."""
    state = State(job["lines"])
    header = json.dumps({HEADER: job}).encode() + b"\n"
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        file = path.open("w+b")
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror or exc}") from None
    with file:
        first = file.readline()
        if not first:
            file.write(header)
        elif _header(first) != job:
            raise UsageError(
                f"{path} holds the responses of another job (another input file, or other --backend, --model, "
                f"--temperature or --max-tokens): delete it to start over, or rerun with the same ones"
            )
        else:
            end = _read_records(file, state)
            file.seek(end)
            file.truncate()  # a line cut short by a kill mid-write
        yield state, file


def _header(line: bytes) -> object:
    try:
        return json.loads(line).get(HEADER)
    except (ValueError, AttributeError):
        return None


def _read_records(file: IO[bytes], state: State) -> int:
    """Record every whole response line of ``file`` in ``state``; the offset after the last one."""
    end = offset = file.tell()
    while line := file.readline():
        if not line.endswith(b"\n"):
            break
        try:
            record = json.loads(line)
            index, success = record["index"], record["success"]
        except (ValueError, KeyError, TypeError):
            break
        if isinstance(index, int) and 0 <= index < len(state.ok):
            state.record(index, success is True, offset)
        offset = end = file.tell()
    return end


def _write_output(output: Path, partial: Path, state: State) -> None:
    """``output`` from the partial file's latest response for each input, in input order (written
    to a temporary file first, then moved into place)."""
    temporary = output.with_name(output.name + ".tmp")
    with partial.open("rb") as source, temporary.open("wb") as out:
        for offset in state.offsets:
            source.seek(offset)
            out.write(source.readline())
    os.replace(temporary, output)


def _say(message: str | None) -> None:
    if message:
        print(f"chatplug: {message}", file=sys.stderr)
