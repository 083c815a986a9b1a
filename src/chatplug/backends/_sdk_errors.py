"""Error mapping shared by the ``openai`` and ``anthropic`` backends.

Both SDKs are generated from the same template (Stainless): the same class names
(``APIStatusError`` with ``status_code``, ``response`` and ``body``; ``APITimeoutError`` under
``APIConnectionError``) and the same retry headers. So one mapping serves both; each backend
passes its SDK module and a provider-specific hint per status.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from .._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ChatplugError,
    ContextLengthExceededError,
    InvalidResponseError,
    status_error,
)
from .._types import ChatRequest

# Phrases with which providers and OpenAI-compatible servers report an over-long prompt.
CONTEXT_MARKERS = (
    "context_length_exceeded",
    "exceed_context_size",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
)


def map_sdk_error(
    sdk: ModuleType, exc: Exception, request: ChatRequest, where: str, hints: Mapping[int, str]
) -> ChatplugError | None:
    """The chatplug error for an exception of a Stainless SDK, or None if it is none of its."""
    if isinstance(exc, sdk.APITimeoutError):
        return APITimeoutError(
            f"{where} did not answer within {request.timeout:g} s. Raise LLM_TIMEOUT or lower max_tokens."
        )
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__})" if cause else ""
        return APIConnectionError(
            f"could not connect to {where}{detail}. Check that the server runs and that the base URL is right."
        )
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        detail = _error_message(exc.body) or exc.message
        request_id = getattr(exc, "request_id", None)
        suffix = f" (request id {request_id})" if request_id else ""
        hint = hints.get(status, "")
        message = f"{where} answered HTTP {status}: {detail}{suffix}.{' ' + hint if hint else ''}"
        if status in (400, 413) and any(m in str(exc.body).lower() for m in CONTEXT_MARKERS):
            return ContextLengthExceededError(
                f"{message} The conversation is longer than the model's context: shorten it or "
                "use a model with a longer context.",
                status_code=status,
            )
        return status_error(status, message, retry_after=retry_after(exc.response.headers))
    if isinstance(exc, (sdk.APIResponseValidationError, ValueError)):
        return InvalidResponseError(f"{where} sent a response that is not a valid reply ({type(exc).__name__}: {exc}).")
    if isinstance(exc, sdk.APIError):  # e.g. an error event inside a 200 stream
        return status_error(500, f"{where} reported an error: {exc.message}")
    return None


def _error_message(body: Any) -> str | None:
    """The human message in an error body: OpenAI's ``{"message"}`` (the SDK strips the
    ``error`` wrapper) or Anthropic's ``{"type": "error", "error": {"message"}}``."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())
