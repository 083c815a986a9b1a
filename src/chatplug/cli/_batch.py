"""``chatplug batch IN.jsonl -o OUT.jsonl``: a file of inputs through the async batch engine,
resumable, and a rerun pays for nothing twice.

Two files: ``OUT.jsonl``, one response per input in input order (what users read), and
``OUT.jsonl.partial``, whose first line names the job (the input's SHA-256 and the options that
change the answers) and whose other lines are the responses received since ``OUT.jsonl`` was last
written. Each response is appended there as it arrives (flushed, so a Ctrl-C or a kill loses none
that arrived). When a run ends, ``OUT.jsonl`` is written in input order from both (a temporary file
moved into place), and the partial file is cut back to its header line: it is kept, so that the
next run knows which job ``OUT.jsonl`` answers.

A run reads ``OUT.jsonl`` (when the partial file names this job), then the partial file, and sends
only the inputs with no successful response in either: nothing for a finished job (``OUT.jsonl`` is
then left as it is, byte for byte), the failed ones, and those whose lines were deleted from
``OUT.jsonl``. Another input or other options is refused rather than mixed; so is an ``OUT.jsonl``
with no partial file, whose job is unknown. ``--restart`` removes both and answers every input anew.
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

from .._core.exceptions import ConfigError, InvalidInputError
from .._core.settings import Settings, env, settings
from .._core.values import LLMResponse
from .._extras.batch import reporter, run_async
from .._pipeline.api import generate_completion_async, generate_completion_with_messages_async
from .._pipeline.response import failed
from ._arguments import positive_int, temperature

HEADER = "chatplug_batch"

#: The options in a job's header: the key, the flag and the setting (with its LLM_* variable) of
#: each. A value is the flag's or, without it, the variable's (``None``: neither, the default).
OPTIONS = (
    ("backend", "--backend", Settings.backend),
    ("model", "--model", Settings.model_name),
    ("temperature", "--temperature", Settings.temperature),
    ("max_tokens", "--max-tokens", Settings.max_tokens),
)


class UsageError(Exception):
    """A mistake in the command: exit status 2."""


class Invalid:
    """An input line that is no input; its response is a failure, and nothing is sent."""

    def __init__(self, message: str) -> None:
        self.message = message


def parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="chatplug batch",
        description="Send every input of a JSONL file and write one response per line, in input order. Each "
        'input line is a JSON string (a prompt), a JSON list of messages, or {"prompt": ...} or {"messages": '
        "[...]}. Interrupted or partly failed? Run the same command again: only the inputs without a "
        "successful response are sent (none for a finished job; delete lines from the output to have those "
        "inputs answered again).",
    )
    parser.add_argument("input", type=Path, help="the JSONL file of inputs")
    parser.add_argument("--output", "-o", type=Path, required=True, help="the JSONL file of responses to write")
    parser.add_argument("--concurrency", "-c", type=positive_int, default=8, help="requests at a time (default: 8)")
    parser.add_argument("--backend", "-b", help="backend name (default: LLM_BACKEND or ollama)")
    parser.add_argument("--model", "-m", help="model name, optionally as backend:model")
    parser.add_argument("--temperature", "-t", type=temperature, help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=positive_int, help="most tokens to generate")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    parser.add_argument(
        "--restart", action="store_true", help="answer every input anew: the output and its .partial file are replaced"
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    output = args.output
    partial = output.with_name(output.name + ".partial")
    try:
        total, digest = _survey(args.input)
        job = {"input": digest, "lines": total, **_options(args)}
        if args.restart:
            _remove(output, partial)
        with _open_partial(partial, output, job) as (state, log, header_end):
            missing = total - state.succeeded
            if missing:
                _say(f"{state.succeeded} of {total} inputs answered by an earlier run; sending the other {missing}"
                     if state.succeeded else None)  # fmt: skip
                try:
                    asyncio.run(_send(args, _missing(args.input, state), missing, state, log))
                except KeyboardInterrupt:
                    _say(f"interrupted: {state.succeeded} of {total} answered and kept (in {output} and {partial}); "
                         "run the same command again to send the rest")  # fmt: skip
                    return 130
            elif total:
                _say(f"all {total} inputs answered by an earlier run; nothing sent")
            if missing or not state.output_is_current:
                _write_output(output, partial, state)
            # Every response is in the output now: the partial file keeps only the job's name.
            log.truncate(header_end)
    except UsageError as exc:
        _say(str(exc))
        return 2
    failures = total - state.succeeded
    if failures:
        _say(f"{failures} of {total} inputs failed (their errors are in {output}); run the same command again "
             "to retry just those")  # fmt: skip
        return 1
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that change the answers: from the command line or, when not given there, the
    environment (``LLM_MODEL_NAME=a`` and ``--model b`` are different jobs); ``None``: the default."""
    options: dict[str, Any] = {}
    for key, _, setting in OPTIONS:
        value = getattr(args, key)
        if value is None and env(setting.env):
            try:
                value = getattr(settings, setting.name)
            except ConfigError as exc:  # every call would fail with it: say so before sending anything
                raise UsageError(str(exc)) from None
        options[key] = value
    return options


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
    """Where each input stands: the offset of its latest response (-1: none yet), in the output
    (``in_output``) or in the partial file, and whether it succeeded. Ten bytes an input, whatever
    the input's size. ``output_is_current``: the output is already what a run would write."""

    def __init__(self, total: int) -> None:
        self.offsets = array("q", [-1]) * total
        self.in_output = bytearray(total)
        self.ok = bytearray(total)
        self.succeeded = 0
        self.output_is_current = False

    def record(self, index: int, success: bool, offset: int, in_output: bool = False) -> None:
        self.offsets[index] = offset
        self.in_output[index] = in_output
        self.succeeded += success - self.ok[index]
        self.ok[index] = success


def _remove(output: Path, partial: Path) -> None:
    for path in (output, partial):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot remove {path}: {exc.strerror or exc}") from None


HOW_TO_GO_ON = "add --restart to answer every input anew (replacing {output}), or write to another --output"


@contextlib.contextmanager
def _open_partial(path: Path, output: Path, job: dict[str, Any]) -> Iterator[tuple[State, IO[bytes], int]]:
    """The job's state from ``output`` and the partial file ``path`` (made with its header if
    new), that file open to append, and where its header ends."""
    state = State(job["lines"])
    header = json.dumps({HEADER: job}).encode() + b"\n"
    unknown = UsageError(f"{output} exists, but {path}, which names the input and options it answers, does not: "
                         + HOW_TO_GO_ON.format(output=output))  # fmt: skip
    try:
        file = path.open("r+b")
    except FileNotFoundError:
        if output.exists():  # left by another job, or by a version that removed its partial file
            raise unknown from None
        file = path.open("w+b")
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror or exc}") from None
    with file:
        first = file.readline()
        if not first:
            if output.exists():
                raise unknown
            file.write(header)
            first = header
        else:
            _check_job(path, output, first, job)
            current = _read_output(output, state)
            end = _read_records(file, state)
            state.output_is_current = current and end == len(first)
            file.seek(end)
            file.truncate()  # a line cut short by a kill mid-write
        yield state, file, len(first)


def _check_job(path: Path, output: Path, first: bytes, job: dict[str, Any]) -> None:
    """``UsageError`` saying what differs, unless the header line ``first`` names ``job``."""
    earlier = _header(first)
    if earlier == job:
        return
    if not isinstance(earlier, dict):
        raise UsageError(f"{path} is not a chatplug batch file (its first line names no job): "
                         + HOW_TO_GO_ON.format(output=output))  # fmt: skip
    differences = []
    lines, digest = earlier.get("lines"), str(earlier.get("input"))
    if (lines, digest) != (job["lines"], job["input"]):
        differences.append(f"the input file is not the one it answers ({lines} inputs, SHA-256 {digest[:12]}...; "
                           f"now {job['lines']}, {job['input'][:12]}...)")  # fmt: skip
    for key, flag, setting in OPTIONS:
        if earlier.get(key) != job[key]:
            differences.append(f"{flag} (or {setting.env}) was {_told(earlier.get(key))}, now {_told(job[key])}")
    raise UsageError(
        f"{path}, the record of {output}, names another job: {'; '.join(differences) or 'not this one'}. To go "
        "on with that job, run it with its input and options; to answer this one, " + HOW_TO_GO_ON.format(output=output)
    )


def _told(value: object) -> str:
    return "unset" if value is None else repr(value)


def _header(line: bytes) -> object:
    try:
        return json.loads(line).get(HEADER)
    except (ValueError, AttributeError):
        return None


def _response(line: bytes) -> tuple[int, bool] | None:
    """``(index, success)`` of a response line, or ``None`` when it is none."""
    try:
        record = json.loads(line)
        index, success = record["index"], record["success"]
    except (ValueError, KeyError, TypeError):
        return None
    if type(index) is not int or not isinstance(success, bool):
        return None
    return index, success


def _read_output(path: Path, state: State) -> bool:
    """Record the responses in ``path``, the output of an earlier run of this job (lines may have
    been deleted since); whether it is exactly what a run would write from them. A line that is
    no response to one of the job's inputs is an error: rewriting the output would drop it."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    total = len(state.ok)
    in_order = True
    count = offset = 0
    with file:
        for number, line in enumerate(file, 1):
            if line.strip():
                response = _response(line)
                if response is None or not 0 <= response[0] < total:
                    raise UsageError(
                        f"{path} line {number} is no response to one of the {total} inputs: delete it (its input, "
                        "if any, is then sent again), or " + HOW_TO_GO_ON.format(output=path)
                    )
                index, success = response
                if state.offsets[index] != -1:
                    raise UsageError(f"{path} has two responses to input {index} (the second on line {number}): "
                                     "delete one")  # fmt: skip
                state.record(index, success, offset, in_output=True)
                in_order = in_order and index == count and line.endswith(b"\n")
                count += 1
            else:
                in_order = False  # a blank line: the output written has none
            offset += len(line)
    return in_order and count == total


def _read_records(file: IO[bytes], state: State) -> int:
    """Record every whole response line of ``file`` in ``state``; the offset after the last one."""
    end = offset = file.tell()
    while line := file.readline():
        if not line.endswith(b"\n"):
            break
        response = _response(line)
        if response is None:
            break
        index, success = response
        if 0 <= index < len(state.ok):
            state.record(index, success, offset)
        offset = end = file.tell()
    return end


def _write_output(output: Path, partial: Path, state: State) -> None:
    """``output`` from the latest response to each input, in input order, each taken from the
    output as it was or from the partial file (written to a temporary file first, then moved
    into place)."""
    temporary = output.with_name(output.name + ".tmp")
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(partial.open("rb"))
        earlier = stack.enter_context(output.open("rb")) if 1 in state.in_output else log
        out = stack.enter_context(temporary.open("wb"))
        for index, offset in enumerate(state.offsets):
            source = earlier if state.in_output[index] else log
            source.seek(offset)
            line = source.readline()
            out.write(line if line.endswith(b"\n") else line + b"\n")  # a last line saved without one
    os.replace(temporary, output)


def _say(message: str | None) -> None:
    if message:
        print(f"chatplug: {message}", file=sys.stderr)
