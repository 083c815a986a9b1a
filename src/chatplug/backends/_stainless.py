"""What the ``openai`` and ``anthropic`` backends share: both SDKs are generated from the same
template (Stainless).

They have the same client shape (``api_key``, ``base_url``, ``timeout``, ``max_retries``), the
same exception classes (``APIStatusError`` with ``status_code``, ``response`` and ``body``;
``APITimeoutError`` under ``APIConnectionError``) and the same retry headers. So one base class
holds the client reuse, the option filtering and the error mapping; each backend adds how it
connects, builds its provider's request and reads its reply.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from chatplug import (
    APIConnectionError,
    APITimeoutError,
    ChatBackend,
    ChatplugError,
    ChatRequest,
    ChatResult,
    InvalidInputError,
    ServerError,
)
from chatplug.toolkit import ClientCache, invalid_response, status_error, supported_options, transport_error


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
        self._not_accepted = f"not a parameter of {sdk.__name__} {sdk.__version__}"
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

    def complete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        kwargs = self.arguments(request, conn)
        with self._clients.sync(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            try:
                return self._read(self.create(client)(**kwargs), conn)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        kwargs = self.arguments(request, conn)
        with self._clients.async_(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            try:
                return self._read(await self.create(client)(**kwargs), conn)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    def close(self) -> None:
        self._clients.close()

    def pass_through(
        self, request: ChatRequest, handled: tuple[str, ...] = (), ignored: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The options this SDK's ``create()`` takes; the rest are left out with a debug log."""
        return supported_options(request, self.accepted, handled=handled, ignored=ignored, why=self._not_accepted)

    def _read(self, response: Any, conn: Connection) -> ChatResult:
        try:
            return self.result(response)
        except (AttributeError, TypeError, IndexError, KeyError) as exc:  # the SDKs do not validate
            raise invalid_response(conn.where, exc) from None

    def _mapped(self, exc: Exception, request: ChatRequest, conn: Connection) -> Exception:
        """The chatplug error for ``exc``; ``exc`` itself if it is no provider failure (the
        dispatcher reports it as a backend bug). Secrets are masked by the dispatcher."""
        if isinstance(exc, ChatplugError):
            return exc
        return map_sdk_error(self.sdk, exc, request, conn.where, self.hints) or exc


def _client_key(conn: Connection, request: ChatRequest) -> tuple[Any, ...]:
    return (conn.base_url, request.timeout, request.max_retries)  # no secret: see ClientCache


def _credential(conn: Connection) -> tuple[str | None, str | None]:
    return (conn.api_key, conn.auth_token)


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
        mapped = transport_error(cause, where=where, timeout=request.timeout) if cause is not None else None
        if isinstance(mapped, APIConnectionError):
            mapped.message = mapped.message.replace(f" {where}", f" {where}{tries}", 1) if tries else mapped.message
            return mapped
        return APIConnectionError(
            f"could not connect to {where}{tries}. Check that the server runs and that the base URL is right."
        )
    if isinstance(exc, sdk.APIStatusError):
        request_id = getattr(exc, "request_id", None)
        hint = hints.get(exc.status_code, "").format(model=request.model)
        said = f"(request id {request_id}) {hint}" if request_id else hint
        body = exc.body or exc.message
        return status_error(exc.status_code, body, where=where, headers=exc.response.headers, hint=said.strip())
    if isinstance(exc, (sdk.APIResponseValidationError, RecursionError)) or (
        isinstance(exc, ValueError) and type(exc).__module__.startswith("json")
    ):
        return invalid_response(where, exc)
    if isinstance(exc, (TypeError, ValueError)):  # the SDK refused the arguments before sending
        return InvalidInputError(
            f"the {sdk.__name__} SDK refused the arguments ({type(exc).__name__}: {exc}); nothing was sent."
        )
    if isinstance(exc, sdk.APIError):  # e.g. an error event inside a 200 stream
        return ServerError(f"{where} reported an error: {exc.message}")
    return None
