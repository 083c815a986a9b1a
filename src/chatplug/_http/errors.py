"""From a provider's failure to chatplug's exception: the one mapping every backend shares.

``status_error`` reads an HTTP error (status, body, headers) the way providers write them;
``transport_error`` and ``map_exceptions`` turn the exceptions of the HTTP stacks under the SDKs
(httpx, httpx2, httpcore, aiohttp, the socket layer) into connection, timeout or configuration
errors. Both are public through ``chatplug.toolkit``.
"""

from __future__ import annotations

import email.utils
import json
import math
import socket
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .._core.exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ChatplugError,
    ConfigError,
    ContextLengthExceededError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    ServerError,
)

#: Phrases with which providers and OpenAI-compatible servers report an over-long prompt.
CONTEXT_MARKERS = (
    "context_length_exceeded",
    "exceed_context_size",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "exceeds the maximum number of tokens",  # Gemini: "The input token count (N) exceeds the maximum ..."
)

#: How much of an error body goes into a message: a 50 MB HTML page is not an error message.
DETAIL_LIMIT = 500


def status_class(status: int) -> type[APIStatusError]:
    """The chatplug exception class for an HTTP error status: one table for every backend."""
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status in (503, 529):
        return OverloadedError
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError


def status_error(
    status: int,
    body: object = None,
    *,
    where: str,
    headers: Mapping[str, str] | None = None,
    hint: str = "",
) -> APIStatusError:
    """The chatplug exception for an HTTP error answer from ``where`` ("OpenAI at http://...").

    ``body`` is the error body (bytes, text or parsed JSON); its message is found in the shapes
    providers use (``{"error": {"message"}}``, ``{"error": "..."}``, ``{"message"}``) and cut to
    ``DETAIL_LIMIT`` characters. ``Retry-After`` (or ``retry-after-ms``) in ``headers`` sets
    ``retry_after``. A 400 or 413 whose body says the prompt is too long is a
    ``ContextLengthExceededError``. ``hint`` is added: what the caller should do.
    """
    detail = error_detail(body)
    said = detail if detail.endswith((".", "!", "?")) else f"{detail}."
    message = f"{where} answered HTTP {status}: {said}{' ' + hint if hint else ''}"
    wait = retry_after(headers) if headers is not None else None
    if status in (400, 413) and any(marker in _text(body).lower() for marker in CONTEXT_MARKERS):
        return ContextLengthExceededError(
            f"{message} The conversation is longer than the model's context: shorten it or use a "
            "model with a longer context.",
            status_code=status,
        )
    return status_class(status)(message, status_code=status, retry_after=wait)


def error_detail(body: object) -> str:
    """The human message in an error body, cut to ``DETAIL_LIMIT`` characters."""
    parsed: object = body
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            parsed = json.loads(text) if len(text) < 100_000 else text
        except (ValueError, RecursionError):
            parsed = text
    found = _message(parsed)
    if found is None:
        found = _text(parsed).strip() or "(no body)"
    return _cut(" ".join(found.split()))


def _message(body: object) -> str | None:
    if isinstance(body, Mapping):
        for key in ("error", "message", "detail"):
            inner = body.get(key)
            if isinstance(inner, str) and inner:
                return inner
            if isinstance(inner, Mapping):
                found = _message(inner)
                if found:
                    return found
    return None


def _text(body: object) -> str:
    if isinstance(body, bytes):
        return body[: DETAIL_LIMIT * 20].decode("utf-8", "replace")
    return body[: DETAIL_LIMIT * 20] if isinstance(body, str) else repr(body)[: DETAIL_LIMIT * 20]


def _cut(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else f"{text[:DETAIL_LIMIT]}... [cut: {len(text)} characters]"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date);
    ``None`` when absent or not a finite, non-negative time."""
    candidates: list[tuple[str, float]] = [("retry-after-ms", 1000.0), ("retry-after", 1.0)]
    for name, scale in candidates:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) / scale
        except ValueError:
            if scale != 1.0:
                continue
            try:
                seconds = email.utils.parsedate_to_datetime(raw).timestamp() - time.time()
            except (TypeError, ValueError, OverflowError):
                continue
            seconds = max(0.0, seconds)
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


# -- transport failures ------------------------------------------------------------------

#: Class names of the HTTP stacks' exceptions (httpx, httpx2, httpcore, aiohttp), by meaning;
#: matched along each exception's MRO so that no stack need be imported to be mapped. The names
#: are the stacks' public API; a class that a release renames is still matched by its bases'
#: names (``TransportError``, ``ClientConnectionError``, ``ConnectionError`` ...): a generic connection error.
_TIMEOUTS = {"TimeoutException", "ServerTimeoutError", "TimeoutError", "ConnectionTimeoutError", "SocketTimeoutError"}
_BAD_URL = {"InvalidURL", "UnsupportedProtocol", "InvalidUrlClientError", "NonHttpUrlClientError"}
_CONNECT = {"ConnectError", "ClientConnectorError", "ClientHttpProxyError", "ConnectionRefusedError", "gaierror"}
_BROKEN = {
    "ReadError",
    "WriteError",
    "CloseError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "ProtocolError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ClientOSError",
    "ConnectionResetError",
    "BrokenPipeError",
    "NetworkError",
    "TransportError",
    "ClientConnectionError",
    "ConnectionError",
}
_REDIRECTS = {"TooManyRedirects", "TooManyRedirectsError"}


def transport_error(
    exc: BaseException,
    *,
    where: str,
    timeout: float | None = None,
    connect_hint: str = "Check that the server runs and that its address is right.",
    setting: str = "",
) -> ChatplugError | None:
    """The chatplug error for a failure of the HTTP stack talking to ``where``, or ``None`` when
    ``exc`` is none. ``setting`` names the variable that holds the address (for a bad URL)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _BAD_URL:
        named = f" ({setting})" if setting else ""
        return ConfigError(f"the address of {where}{named} is not valid: {_cut(str(exc)) or type(exc).__name__}.")
    if names & _TIMEOUTS:
        within = f" within {timeout:g} s" if timeout is not None else " in time"
        return APITimeoutError(f"{where} did not answer{within}. Raise LLM_TIMEOUT, or lower max_tokens.")
    if names & _REDIRECTS:
        return ServerError(f"{where} redirected too many times ({_cut(str(exc))}). Check its address.")
    if _dns_failure(exc):
        return APIConnectionError(f"could not resolve the host name of {where}: check the address for a typo.")
    # A bare ConnectionError (not a reset or a broken pipe) is what the ollama SDK raises when
    # it cannot connect.
    if names & _CONNECT or type(exc) is ConnectionError:
        return APIConnectionError(f"could not connect to {where}. {connect_hint}")
    if names & _BROKEN:
        return APIConnectionError(
            f"the connection to {where} broke before the reply was complete ({type(exc).__name__}). "
            "Retry; if it persists, check the server's log."
        )
    return None


def _dns_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, socket.gaierror) or "Name or service not known" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def invalid_response(where: str, exc: BaseException) -> ChatplugError:
    """The error for a reply that could not be read as one of the provider's.

    A ``UnicodeEncodeError`` is no reply's fault (reading one decodes): it is a request that could
    not be encoded as UTF-8 (a lone surrogate in a model or tool name ...), refused before it was
    sent, and so the caller's ``InvalidInputError``."""
    if isinstance(exc, UnicodeEncodeError):
        return InvalidInputError(
            f"the request to {where} could not be encoded as UTF-8 ({_cut(str(exc))}): a text in it holds a lone "
            "surrogate, which is not valid Unicode. Nothing was sent."
        )
    return InvalidResponseError(
        f"{where} sent a reply chatplug could not read ({type(exc).__name__}: {_cut(str(exc))}). "
        "Check that the address points at a server of this API."
    )


class map_exceptions:
    """``with map_exceptions(where=..., timeout=...):`` around a request turns the HTTP stack's
    transport exceptions into chatplug's (see ``transport_error``), and a body that is not
    JSON into ``InvalidResponseError``. chatplug's own exceptions and anything else pass through.
    """

    def __init__(self, *, where: str, timeout: float | None = None, **options: Any) -> None:
        self.where, self.timeout, self.options = where, timeout, options

    def __enter__(self) -> map_exceptions:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, ChatplugError) or not isinstance(exc, Exception):
            return
        mapped = transport_error(exc, where=self.where, timeout=self.timeout, **self.options)
        if mapped is None and isinstance(exc, (json.JSONDecodeError, RecursionError)):
            mapped = invalid_response(self.where, exc)
        if mapped is not None:
            raise mapped from None
