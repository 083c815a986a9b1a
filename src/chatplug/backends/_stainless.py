"""What the ``openai`` and ``anthropic`` backends share: both SDKs are generated from the same
template (Stainless).

They have the same client shape (``api_key``, ``base_url``, ``timeout``, ``max_retries``), the
same exception classes (``APIStatusError`` with ``status_code``, ``response`` and ``body``;
``APITimeoutError`` under ``APIConnectionError``) and the same retry headers. So one base class
holds the client reuse, the option filtering and the error mapping; each backend adds how it
connects, builds its provider's request and reads its reply.
"""

from __future__ import annotations

import email.utils
import importlib
import inspect
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from .._backend import ChatBackend
from .._clients import ClientCache
from .._exceptions import (
    APIConnectionError,
    APITimeoutError,
    ChatplugError,
    ConfigError,
    ContextLengthExceededError,
    InvalidInputError,
    InvalidResponseError,
    status_error,
)
from .._types import ChatRequest, ChatResult
from ._env import redacted

logger = logging.getLogger("chatplug")


def import_sdk(name: str) -> ModuleType:
    """The provider SDK, imported on first use (each takes ~400 ms); if it is not installed,
    a config error with the exact command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f'the {name} backend needs the {name} SDK ({exc}). Install it with: pip install "chatplug[{name}]"'
        ) from None


@dataclass(frozen=True)
class Connection:
    """Where and as whom a backend connects, read from the environment at each call."""

    base_url: str | None  # None: the SDK's default, the hosted service
    api_key: str | None
    where: str  # for messages: "OpenAI at https://..."
    auth_token: str | None = None  # a bearer token instead of a key (Anthropic)

    def __repr__(self) -> str:
        return f"Connection(base_url={self.base_url!r}, where={self.where!r})"


class StainlessBackend(ChatBackend):
    """A backend on a Stainless SDK: subclasses say how to connect, ask and read the reply."""

    #: The SDK's sync and async client classes, its exceptions and ``create`` live here.
    sdk: ModuleType
    #: Hints added to an error message, per HTTP status; ``{model}`` is the requested model.
    hints: ClassVar[Mapping[int, str]] = {}
    #: The hosted service, passed when no base URL is set: given None, the SDKs read their
    #: base URL variable themselves, unstripped (and an empty one as the URL "").
    hosted_url: ClassVar[str]

    def __init__(self, sdk: ModuleType, sync_client: type[Any], async_client: type[Any], create: Any) -> None:
        self.sdk = sdk
        # What the installed SDK's create() takes, read once: extra options pass through
        # only if the SDK (and so the provider) knows them.
        self.accepted = frozenset(inspect.signature(create).parameters) - {"self"}
        self._clients: ClientCache[Any, Any] = ClientCache(
            lambda conn, request: sync_client(**self.client_arguments(conn, request)),
            lambda conn, request: async_client(**self.client_arguments(conn, request)),
        )

    @abstractmethod
    def connection(self) -> Connection:
        """Base URL and key from the environment (read with ``_env``); raise
        ``AuthenticationError`` if none."""

    @abstractmethod
    def arguments(self, request: ChatRequest, conn: Connection) -> dict[str, Any]:
        """The keyword arguments of the SDK's ``create()`` for ``request``."""

    @abstractmethod
    def result(self, response: Any) -> ChatResult:
        """The ``ChatResult`` read from the SDK's reply object."""

    @staticmethod
    @abstractmethod
    def create(client: Any) -> Callable[..., Any]:
        """The SDK method that sends a chat request, on ``client``."""

    def client_arguments(self, conn: Connection, request: ChatRequest) -> dict[str, Any]:
        credentials = {"auth_token": conn.auth_token} if conn.auth_token else {"api_key": conn.api_key}
        return {
            **credentials,
            "base_url": conn.base_url or self.hosted_url,
            "timeout": request.timeout,
            "max_retries": request.max_retries,
        }

    # Both raise the mapped error after the except block, not in it: raised there, it would
    # keep the SDK's exception as its __context__ (``from None`` only hides it from tracebacks),
    # and with it the server's body and the request's headers, the key among them.

    def complete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        client = self._clients.sync(_client_key(conn, request), conn, request, credential=_credential(conn))
        kwargs = self.arguments(request, conn)
        try:
            return self._read(self.create(client)(**kwargs), conn)
        except Exception as exc:
            error = self._map_error(exc, request, conn)
        raise error

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        client = self._clients.async_(_client_key(conn, request), conn, request, credential=_credential(conn))
        kwargs = self.arguments(request, conn)
        try:
            return self._read(await self.create(client)(**kwargs), conn)
        except Exception as exc:
            error = self._map_error(exc, request, conn)
        raise error

    def close(self) -> None:
        for client in self._clients.clear():
            client.close()

    def pass_through(
        self, request: ChatRequest, options: Mapping[str, Any], ignored: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The ``options`` this SDK's ``create()`` takes; the rest are left out with a debug log
        (an Ollama-only ``repeat_penalty`` would make the provider refuse the request).
        ``ignored`` names settings the backend leaves out itself, with the reason."""
        passed: dict[str, Any] = {}
        dropped = dict(ignored or {})
        for key, value in options.items():
            if key in self.accepted:
                passed[key] = value
            else:
                dropped[key] = f"not a parameter of {self.sdk.__name__} {self.sdk.__version__}"
        for key, why in dropped.items():
            logger.debug("%s: %s is not sent (%s)", request.backend, key, why)
        return passed

    def _read(self, response: Any, conn: Connection) -> ChatResult:
        try:
            return self.result(response)
        except (AttributeError, TypeError, IndexError, KeyError) as exc:  # the SDKs do not validate
            raise InvalidResponseError(
                f"{conn.where} sent a reply chatplug could not read ({type(exc).__name__}: {exc}). "
                "Check that the base URL points at a server of this API."
            ) from exc

    def _map_error(self, exc: Exception, request: ChatRequest, conn: Connection) -> Exception:
        """The chatplug error for ``exc``, with secrets redacted. It is raised without the SDK's
        exception chained to it: that quotes the server's body unredacted, and a traceback
        would print it. What the SDK's exception told (status, message, request id) is in the
        mapped message."""
        if isinstance(exc, ChatplugError):
            return exc
        mapped = map_sdk_error(self.sdk, exc, request, conn.where, self.hints)
        if mapped is None:
            return exc  # not a provider failure: the dispatcher reports it as a backend bug
        return redacted(mapped, conn.api_key, conn.auth_token)


def _client_key(conn: Connection, request: ChatRequest) -> tuple[Any, ...]:
    return (conn.base_url, request.timeout, request.max_retries)  # no secret: see ClientCache


def _credential(conn: Connection) -> tuple[str | None, str | None]:
    return (conn.api_key, conn.auth_token)


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
    # The SDK retried these before giving up: say so, since the wait was that many times longer.
    retries = request.max_retries
    tries = f" ({retries + 1} attempts, LLM_MAX_RETRIES={retries})" if retries else ""
    if isinstance(exc, sdk.APITimeoutError):
        return APITimeoutError(
            f"{where} did not answer within {request.timeout:g} s{tries}. Raise LLM_TIMEOUT or lower max_tokens."
        )
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f": {type(cause).__name__}" if cause else ""
        return APIConnectionError(
            f"could not connect to {where}{tries}{detail}. Check that the server runs and that the base URL is right."
        )
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        detail = _error_message(exc.body) or exc.message
        request_id = getattr(exc, "request_id", None)
        suffix = f" (request id {request_id})" if request_id else ""
        hint = hints.get(status, "").format(model=request.model)
        said = f"{detail}{suffix}" if detail.endswith((".", "!", "?")) and not suffix else f"{detail}{suffix}."
        message = f"{where} answered HTTP {status}: {said}{' ' + hint if hint else ''}"
        if status in (400, 413) and any(m in str(exc.body).lower() for m in CONTEXT_MARKERS):
            return ContextLengthExceededError(
                f"{message} The conversation is longer than the model's context: shorten it or "
                "use a model with a longer context.",
                status_code=status,
            )
        return status_error(status, message, retry_after=retry_after(exc.response.headers))
    if isinstance(exc, sdk.APIResponseValidationError) or (
        isinstance(exc, ValueError) and type(exc).__module__.startswith("json")
    ):
        return InvalidResponseError(f"{where} sent a response that is not a valid reply ({type(exc).__name__}: {exc}).")
    if isinstance(exc, (TypeError, ValueError)):  # the SDK refused the arguments before sending
        return InvalidInputError(
            f"the {sdk.__name__} SDK refused the arguments ({type(exc).__name__}: {exc}); nothing was sent."
        )
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
