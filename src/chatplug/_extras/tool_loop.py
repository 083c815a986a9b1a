"""Running a conversation with tools to its end: call the model, run the Python functions it asks
for, send their results back, until it answers without a tool call or the step limit is reached.

Built on the public functions, so every backend that can call tools runs it. A tool that raises
goes back to the model as a tool error (``"Error: ValueError: ..."``); nothing a tool or a
provider does escapes as an exception.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.exceptions import InvalidInputError
from .._core.values import LLMResponse
from .._pipeline.api import generate_completion_with_messages_async, generate_completion_with_messages_sync
from .._pipeline.response import failed

if TYPE_CHECKING:
    from .._core.tools import ToolCall

DEFAULT_MAX_STEPS = 8


@dataclass
class ToolRun:
    """What ``run_tools_sync`` / ``run_tools_async`` did.

    ``response`` is the last model reply (the final answer when ``complete``); ``messages`` the
    whole transcript, the caller's messages first, then each reply and tool result, ready to
    continue the conversation; ``steps`` how many model calls were made; ``complete`` whether
    the model gave a final answer (not stopped by an error or the step limit).
    """

    response: LLMResponse
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    complete: bool = False


def run_tools_sync(
    messages: str | Sequence[Mapping[str, Any]],
    tools: Sequence[Callable[..., Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    **options: Any,
) -> ToolRun:
    """Run ``messages`` (or a prompt) with ``tools`` (plain functions, sync or async) to the end.
    A ``tool_choice`` that forces a tool call (``"required"``, a tool's name) holds for the first
    step only; the later steps are ``"auto"``, so the model can answer."""
    try:
        transcript, by_name = _start(messages, tools, max_steps)
    except InvalidInputError as exc:
        return ToolRun(failed(exc, None, 0.0, model_name))
    run = ToolRun(LLMResponse("", 0, 0.0, "", False), transcript)
    later = _later_steps(options)
    while run.steps < max_steps:
        step_options = later if run.steps else options
        run.response = generate_completion_with_messages_sync(
            transcript, model_name, temperature, max_tokens, backend=backend, tools=list(tools), **step_options
        )
        run.steps += 1
        if not run.response.success or not run.response.tool_calls:
            run.complete = run.response.success
            return run
        transcript.append(run.response.message)
        transcript += [_result(call, _call_sync(by_name, call)) for call in run.response.tool_calls]
    return run


async def run_tools_async(
    messages: str | Sequence[Mapping[str, Any]],
    tools: Sequence[Callable[..., Any]],
    model_name: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    *,
    backend: str | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    **options: Any,
) -> ToolRun:
    """Async twin of ``run_tools_sync``: async tools are awaited, sync ones run in a worker thread
    (a tool may block), the tool calls of one reply concurrently."""
    import asyncio

    try:
        transcript, by_name = _start(messages, tools, max_steps)
    except InvalidInputError as exc:
        return ToolRun(failed(exc, None, 0.0, model_name))
    run = ToolRun(LLMResponse("", 0, 0.0, "", False), transcript)
    later = _later_steps(options)
    while run.steps < max_steps:
        step_options = later if run.steps else options
        run.response = await generate_completion_with_messages_async(
            transcript, model_name, temperature, max_tokens, backend=backend, tools=list(tools), **step_options
        )
        run.steps += 1
        if not run.response.success or not run.response.tool_calls:
            run.complete = run.response.success
            return run
        transcript.append(run.response.message)
        calls = run.response.tool_calls
        outputs = await asyncio.gather(*(_call_async(by_name, call) for call in calls))
        transcript += [_result(call, output) for call, output in zip(calls, outputs, strict=True)]
    return run


def _start(
    messages: str | Sequence[Mapping[str, Any]], tools: Sequence[Callable[..., Any]], max_steps: int
) -> tuple[list[dict[str, Any]], dict[str, Callable[..., Any]]]:
    if isinstance(messages, str):
        transcript: list[dict[str, Any]] = [{"role": "user", "content": messages}]
    elif isinstance(messages, (list, tuple)):
        transcript = [dict(message) if isinstance(message, Mapping) else message for message in messages]
    else:
        raise InvalidInputError(f"messages must be a prompt or a list of messages, got {type(messages).__name__}.")
    if not isinstance(tools, (list, tuple)) or not tools or not all(callable(tool) for tool in tools):
        raise InvalidInputError("tools must be a non-empty list of functions for run_tools to call.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise InvalidInputError(f"max_steps must be a whole number of at least 1, got {max_steps!r}.")
    return transcript, {getattr(tool, "__name__", repr(tool)): tool for tool in tools}


def _later_steps(options: dict[str, Any]) -> dict[str, Any]:
    """The options of every step after the first: a ``tool_choice`` that forces a tool call,
    sent at every step, would leave the model no way to answer (the loop would run to
    ``max_steps``), so it is ``"auto"`` after the first step, when the forced call was made."""
    if options.get("tool_choice") in (None, "auto", "none"):
        return options
    return {**options, "tool_choice": "auto"}


def _arguments(function: Callable[..., Any], call: ToolCall) -> Callable[[], Any]:
    """The call of ``function`` with the model's arguments, checked and coerced by pydantic."""
    from pydantic import validate_call

    return lambda: validate_call(function)(**call.arguments)


def _call_sync(by_name: Mapping[str, Callable[..., Any]], call: ToolCall) -> str:
    function = by_name.get(call.name)
    if function is None:
        return f"Error: there is no tool named {call.name!r}; the tools are {', '.join(by_name)}."
    try:
        output = _arguments(function, call)()
        if inspect.isawaitable(output):
            import asyncio

            output = asyncio.run(_awaited(output))
    except Exception as exc:
        return f"Error: {type(exc).__name__}: {exc}"
    return _text(output)


async def _call_async(by_name: Mapping[str, Callable[..., Any]], call: ToolCall) -> str:
    import asyncio

    function = by_name.get(call.name)
    if function is None:
        return f"Error: there is no tool named {call.name!r}; the tools are {', '.join(by_name)}."
    try:
        if inspect.iscoroutinefunction(function):
            output = await _arguments(function, call)()
        else:
            output = await asyncio.to_thread(_arguments(function, call))
    except Exception as exc:
        return f"Error: {type(exc).__name__}: {exc}"
    return _text(output)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _text(output: object) -> str:
    if isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return str(output.model_dump_json())
    try:
        return json.dumps(output)
    except (TypeError, ValueError):
        return str(output)


def _result(call: ToolCall, output: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": output}
