"""Turning what a backend did into the ``LLMResponse`` the caller gets, and logging failures.

Everything every backend would otherwise repeat about results lives here, once: checking a
plugin's ``ChatResult``, normalising finish reasons, timing, and, for failures, masking every
registered secret, capping the message's size and cutting the SDK exception off the chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from .._core.checks import thaw
from .._core.exceptions import ChatplugError, InvalidOutputError, PluginError
from .._core.values import ChatRequest, ChatResult, LLMResponse
from .._http.secrets import redact

logger = logging.getLogger("chatplug")

#: The longest ``LLMResponse.error``; longer messages are cut, and the cut is marked.
ERROR_LIMIT = 4000

#: Providers' words for why generation stopped, in chatplug's (OpenAI's) words.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
}


def succeeded(result: ChatResult, request: ChatRequest, start: float, describe: Callable[[str], str]) -> LLMResponse:
    """The response for a backend's ``result``; a malformed one is the plugin's failure."""
    problem = malformed(result)
    if problem is not None:
        return failed(PluginError(f"{describe(request.backend)} returned {problem}"), request, start)
    if result.tool_calls or request.response_format is not None:
        return _with_output(result, request, start, describe)
    return _response(result, request, start)


def _response(result: ChatResult, request: ChatRequest, start: float) -> LLMResponse:
    prompt, completion, blocks = result.prompt_tokens, result.completion_tokens, result.thinking_blocks
    return LLMResponse(
        content=result.content,
        tokens_used=(prompt or 0) + (completion or 0),
        response_time=time.perf_counter() - start,
        model_used=result.model or request.model,
        success=True,
        prompt_tokens=prompt or 0,
        completion_tokens=completion or 0,
        finish_reason=FINISH_REASONS.get(result.finish_reason, result.finish_reason),  # type: ignore[arg-type]
        backend=request.backend,
        reasoning=result.reasoning,
        usage_reported=prompt is not None or completion is not None,
        # Plain dicts, as the provider sent them: the caller sends them back (response.message).
        thinking_blocks=[thaw(block) for block in blocks] if blocks else [],
        citations=list(result.citations),
        reasoning_tokens=result.reasoning_tokens or 0,
    )


def _with_output(result: ChatResult, request: ChatRequest, start: float, describe: Callable[[str], str]) -> LLMResponse:
    """A reply with tool calls or structured output: the calls' arguments parsed, the output
    validated; what does not parse is an ``invalid_output`` failure that keeps the raw text."""
    from .._core.tools import parsed_output, tool_calls

    calls, problem = tool_calls(result.tool_calls)
    if calls:
        response = _response(result, request, start)
        response.tool_calls = calls
        response.finish_reason = "tool_calls"  # whatever the provider called it (Ollama says "stop")
        if problem is None:
            return response
        error: ChatplugError = InvalidOutputError(f"{problem}. The raw text is kept in tool_calls[].raw_arguments.")
    else:
        response = _response(result, request, start)
        assert request.response_format is not None
        try:
            response.parsed = parsed_output(result.content, request.response_format)
            return response
        except InvalidOutputError as exc:
            error = exc
    bad = failed(error, request, start)
    bad.content, bad.reasoning, bad.tool_calls = response.content, response.reasoning, response.tool_calls
    bad.thinking_blocks, bad.reasoning_tokens = response.thinking_blocks, response.reasoning_tokens
    bad.prompt_tokens, bad.completion_tokens, bad.tokens_used, bad.usage_reported = (
        response.prompt_tokens,
        response.completion_tokens,
        response.tokens_used,
        response.usage_reported,
    )
    bad.model_used, bad.finish_reason = response.model_used, response.finish_reason
    return bad


def malformed(result: object) -> str | None:
    """What is wrong with a backend's return value, or ``None`` for a usable ``ChatResult``."""
    if not isinstance(result, ChatResult):
        return f"{type(result).__name__}, not a chatplug.ChatResult."
    if not isinstance(result.content, str):
        return f"a ChatResult whose content is {type(result.content).__name__}, not str."
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        value = getattr(result, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"a ChatResult whose {name} is {value!r}, not a whole number >= 0 or None."
    for name in ("model", "finish_reason"):
        value = getattr(result, name)
        if value is not None and not isinstance(value, str):
            return f"a ChatResult whose {name} is {value!r}, not a str."
    if not isinstance(result.reasoning, str):
        return f"a ChatResult whose reasoning is {result.reasoning!r}, not a str."
    if result.tool_calls:
        from .._core.tools import ToolCall, ToolCallDelta

        if not isinstance(result.tool_calls, (tuple, list)) or not all(
            isinstance(call, (ToolCall, ToolCallDelta)) for call in result.tool_calls
        ):
            return f"a ChatResult whose tool_calls is {result.tool_calls!r}, not ToolCalls."
    blocks = result.thinking_blocks
    if blocks and (not isinstance(blocks, (tuple, list)) or not all(isinstance(block, Mapping) for block in blocks)):
        return f"a ChatResult whose thinking_blocks is {blocks!r}, not a tuple of the provider's blocks (mappings)."
    return None


def failed(exc: ChatplugError, request: ChatRequest | None, start: float, model_name: object = None) -> LLMResponse:
    """The failed response for ``exc``, which is cleaned first (see ``clean``) and logged."""
    clean(exc, request.backend if request is not None else None)
    response = LLMResponse(
        content="",
        tokens_used=0,
        response_time=time.perf_counter() - start,
        model_used=request.model if request else model_name if isinstance(model_name, str) else "",
        success=False,
        error=str(exc),
        backend=request.backend if request else exc.backend,
        error_kind=exc.kind,
        retry_after=exc.retry_after,
        finish_reason=exc.finish_reason,
        usage_reported=False,  # no count arrived; a failed stream sets those that did
        exception=exc,
    )
    logger.warning("chat completion failed (%s): %s", exc.kind.value, response.error)
    return response


def clean(exc: ChatplugError, backend: str | None) -> None:
    """Name the backend, mask secrets, cap the size, and drop the chain: the SDK exception it
    was raised from holds the server's body and the request's headers, the key among them."""
    if exc.backend is None:
        exc.backend = backend
    message = redact(str(exc.message))
    if len(message) > ERROR_LIMIT:
        message = f"{message[:ERROR_LIMIT]}... [cut: {len(message)} characters in all]"
    exc.message = message
    exc.args = (message,)
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True


def as_chatplug_error(exc: Exception, where: str) -> ChatplugError:
    """``exc`` if chatplug's own; anything else escaped a backend: a bug in it, reported as such."""
    if isinstance(exc, ChatplugError):
        return exc
    return PluginError(f"{where} raised {type(exc).__name__}: {exc}")
