"""What the ``openai`` and ``anthropic`` backends share: both SDKs are generated from the same
template (Stainless).

They have the same client shape (``api_key``, ``base_url``, ``timeout``, ``max_retries``), the
same exception classes (``APIStatusError`` with ``status_code``, ``response`` and ``body``;
``APITimeoutError`` under ``APIConnectionError``), the same retry headers and the same streams.
So one base class holds the client reuse, the option filtering, the streaming and the error
mapping; each backend adds how it connects, builds its provider's request and reads its reply and
its stream's events.

A request goes through the client's ``post()`` (the SDKs' documented way to call any endpoint),
with the body the backend built and ``cast_to=object``: the SDK's auth, headers, retries, timeouts,
transport and status errors are all its own, as with ``create()``, and the reply (or each stream
event) comes back as the provider's JSON. What that skips: ``create()``'s walk of the body against
its typed parameters (an identity on the plain JSON a backend builds; half of the openai SDK's work
per request) and the typed model made of the reply that the backend would read five fields of (a
third of the anthropic SDK's).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import MappingProxyType, ModuleType
from typing import Any, ClassVar, NamedTuple

from chatplug import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ChatBackend,
    ChatChunk,
    ChatplugError,
    ChatRequest,
    ChatResult,
    ContextLengthExceededError,
    InvalidInputError,
    ServerError,
)
from chatplug.toolkit import (
    CONTEXT_MARKERS,
    ClientCache,
    async_transport_options,
    deadline_client,
    deadline_scope,
    error_detail,
    first_within,
    invalid_response,
    lost,
    status_class,
    status_error,
    supported_options,
    transport_error,
)

#: The error types (or codes) providers send in an error event inside a stream, whose HTTP status
#: was 200 already, and the HTTP status each stands for: Anthropic's ``error.type`` and OpenAI's
#: ``error.type`` / ``error.code``. Any other is a server error.
STREAM_ERROR_STATUS: Mapping[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


#: What both backends can do beyond text (``ChatBackend.capabilities``): both providers take tool
#: definitions and tool results, images in user turns, and a JSON schema for the reply.
CAPABILITIES = frozenset({"tools", "images", "response_format"})


def arguments_json(arguments: Any) -> str:
    """A tool call's arguments (a dict) as the JSON text the providers send them back in: compact,
    as OpenAI writes them (``{"city":"Tokyo"}``), non-ASCII kept as is."""
    return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)


def parts_of(content: Any) -> tuple[Mapping[str, Any], ...]:
    """A message's content as parts: a string is one text part (none if it is empty)."""
    if isinstance(content, str):
        return ({"type": "text", "text": content},) if content else ()
    return tuple(content or ())


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    return "".join(part.get("text", "") for part in parts_of(content) if part.get("type") == "text")


class Connection(NamedTuple):
    """Where and as whom a backend connects, read from the environment at each call."""

    base_url: str | None  # None: the SDK's default, the hosted service
    api_key: str | None
    where: str  # for messages: "OpenAI at https://..."
    auth_token: str | None = None  # a bearer token instead of a key (Anthropic)

    def __repr__(self) -> str:
        return f"Connection(base_url={self.base_url!r}, where={self.where!r})"


#: ``create()``'s parameters that are no field of the body, and the request option each becomes
#: (as the SDKs' ``make_request_options`` makes them).
REQUEST_OPTIONS: Mapping[str, str] = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}


class StainlessBackend(ChatBackend):
    """A backend on a Stainless SDK: subclasses say how to connect, ask and read the reply."""

    bounds_deadline = True  # deadline_client and first_within
    #: The SDK's sync and async client classes, its exceptions and its streams live here.
    sdk: ModuleType
    #: The endpoint a chat request is posted to, on the client's base URL.
    path: ClassVar[str]
    #: The request options the SDK's ``create()`` adds of its own (openai: which credential to send).
    request_options: Mapping[str, Any] = MappingProxyType({})
    #: ``create()``'s parameters that it sends as headers, by header name (anthropic's ``workspace_id``).
    header_parameters: ClassVar[Mapping[str, str]] = {}
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
        # Streams whose events come as the provider's JSON, as the replies do.
        self._streams: tuple[Any, Any] = (sdk.Stream[object], sdk.AsyncStream[object])
        self._clients: ClientCache[Any, Any] = ClientCache(
            # Sync: the SDK's own HTTP client, every socket of it bounded by the call's deadline.
            lambda conn, request: sync_client(
                **self.client_arguments(conn, request),
                http_client=self.bounded(sdk.DefaultHttpxClient(timeout=request.timeout)),
            ),
            lambda conn, request: async_client(**self.client_arguments(conn, request), **self.async_http_client()),
        )

    @abstractmethod
    def base_url(self) -> str | None:
        """The base URL the environment sets (read with ``env_url``); ``None``: the hosted service."""

    @abstractmethod
    def connection(self) -> Connection:
        """Base URL (``base_url()``) and key from the environment; raise ``AuthenticationError``
        if none."""

    def endpoint(self, request: ChatRequest) -> str:
        """The base URL the call goes to (the response cache keys on it)."""
        return self.base_url() or self.hosted_url

    @abstractmethod
    def arguments(self, request: ChatRequest, conn: Connection) -> dict[str, Any]:
        """The keyword arguments of the SDK's ``create()`` for ``request``."""

    @abstractmethod
    def result(self, response: Any) -> ChatResult:
        """The ``ChatResult`` read from the provider's reply (its JSON: a dict, unchecked)."""

    @abstractmethod
    def chunk(self, event: Any) -> ChatChunk | None:
        """The ``ChatChunk`` for one event (or chunk) of the stream (its JSON); None to skip it."""

    def reader(self) -> Callable[[Any], ChatChunk | None]:
        """What reads one stream's events into chunks, made for each stream: ``chunk``, unless
        the backend keeps what earlier events of the stream said (anthropic's thinking blocks,
        whole only at their end)."""
        return self.chunk

    def stream_arguments(self, request: ChatRequest) -> dict[str, Any]:
        """What ``create()`` takes besides ``arguments`` and ``stream=True`` to stream."""
        return {}

    def client_arguments(self, conn: Connection, request: ChatRequest) -> dict[str, Any]:
        credentials = {"auth_token": conn.auth_token} if conn.auth_token else {"api_key": conn.api_key}
        return {
            **credentials,
            "base_url": conn.base_url or self.hosted_url,
            "timeout": request.timeout,
            "max_retries": request.max_retries,
        }

    def async_http_client(self) -> dict[str, Any]:
        """``{"http_client": ...}``: the SDK's own ``DefaultAsyncHttpxClient`` (its timeout, limits and
        redirects) on aiohttp, its TLS and proxies as its default transport takes them from the
        environment; ``{}`` (the SDK's default client) when ``LLM_ASYNC_TRANSPORT=default``, or
        when that class is no ``AsyncClient`` of httpx2 or httpx (said once)."""
        client_class: Any = getattr(self.sdk, "DefaultAsyncHttpxClient", None)
        http = _http_stack(client_class, "AsyncClient")
        if http is None:
            lost(
                f"chatplug's aiohttp transport on async {self.sdk.__name__} calls",
                f"{self.sdk.__name__}.DefaultAsyncHttpxClient is no AsyncClient of httpx2 or httpx",
            )
            return {}
        limits = getattr(self.sdk, "DEFAULT_CONNECTION_LIMITS", None)
        options = async_transport_options(http, limits=limits, socket_options=self.socket_options)
        if not options:
            return {}
        return {"http_client": client_class(**options)}

    def bounded(self, client: Any) -> Any:
        """The SDK's sync HTTP client with every socket bounded by the call's deadline
        (``deadline_client``); one that is no ``Client`` of httpx2 or httpx goes as it is, bounded
        per operation by its timeout but not by the call's deadline (said once)."""
        if _http_stack(type(client), "Client") is not None:
            return deadline_client(client)
        lost(
            f"the overall deadline of sync {self.sdk.__name__} calls",
            f"{self.sdk.__name__}.DefaultHttpxClient is no Client of httpx2 or httpx",
        )
        return client

    #: The socket options of the SDK's default async transport (anthropic's: TCP keep-alive).
    socket_options: ClassVar[tuple[tuple[int, int, int], ...]] = ()

    def complete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        arguments = self.arguments(request, conn)
        with self._clients.sync(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            try:
                # The time left, as the SDK's timeout (and its read-timeout header).
                timeout = None if request.deadline is None else max(request.deadline - time.monotonic(), 0.001)
                return self._read(self._post(client, arguments, timeout), conn)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        conn = self.connection()
        arguments = self.arguments(request, conn)
        with self._clients.async_(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            try:
                return self._read(await self._post(client, arguments), conn)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    # Streams: the client is borrowed for the whole stream, and the SDK's stream (its HTTP
    # response) is closed whatever ends the iteration: its end, a failure, or the caller stopping
    # (the pipeline closes this generator, which runs the ``finally`` at once).

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        conn = self.connection()
        arguments = {**self.arguments(request, conn), **self.stream_arguments(request), "stream": True}
        read = self.reader()
        with self._clients.sync(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            events: Any = None
            try:
                with deadline_scope(request.deadline):  # the SDK reads the headers here
                    events = self._post(client, arguments, stream_cls=self._streams[0])
                finished = False
                for event in first_within(events, request.deadline):  # the first event within the deadline
                    chunk = self._chunk(read, event, conn)
                    if chunk is not None:
                        finished = finished or chunk.finish_reason is not None
                        yield chunk
                if not finished:
                    raise _cut_off(conn)
            except Exception as exc:
                raise self._mapped(exc, _answered(request) if events is not None else request, conn) from None
            finally:
                if events is not None:
                    events.close()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        conn = self.connection()
        arguments = {**self.arguments(request, conn), **self.stream_arguments(request), "stream": True}
        read = self.reader()
        with self._clients.async_(_client_key(conn, request), conn, request, credential=_credential(conn)) as client:
            events: Any = None
            try:
                events = await self._post(client, arguments, stream_cls=self._streams[1])
                finished = False
                async for event in events:
                    chunk = self._chunk(read, event, conn)
                    if chunk is not None:
                        finished = finished or chunk.finish_reason is not None
                        yield chunk
                if not finished:
                    raise _cut_off(conn)
            except Exception as exc:
                raise self._mapped(exc, _answered(request) if events is not None else request, conn) from None
            finally:
                if events is not None:
                    await events.close()

    def _post(
        self, client: Any, arguments: dict[str, Any], timeout: float | None = None, stream_cls: Any = None
    ) -> Any:
        """``client.post()`` of ``arguments`` (what ``create()`` would take) to the chat endpoint,
        the reply as JSON; a stream of JSON events given ``stream_cls``. On an async client, the
        coroutine."""
        body, options = self.wire(arguments)
        if timeout is not None:
            options["timeout"] = timeout
        if stream_cls is None:
            return client.post(self.path, body=body, options=options, cast_to=object)
        return client.post(self.path, body=body, options=options, cast_to=object, stream=True, stream_cls=stream_cls)

    def wire(self, arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``create()``'s keyword arguments as ``create()`` sends them: the body, and the request
        options it makes of the rest (``extra_headers``, ``extra_body`` ...; headers it takes as
        parameters, the caller's ``extra_headers`` winning, as in ``create()``)."""
        options = dict(self.request_options)
        body = dict(arguments)
        headers = {name: body.pop(key, None) for key, name in self.header_parameters.items()}
        headers = {name: value for name, value in headers.items() if value is not None}
        for key, option in REQUEST_OPTIONS.items():
            value = body.pop(key, None)
            if value is not None:
                options[option] = value
        if headers:
            options["headers"] = {**headers, **options.get("headers", {})}
        return body, options

    def _chunk(self, read: Callable[[Any], ChatChunk | None], event: Any, conn: Connection) -> ChatChunk | None:
        try:
            return read(event)
        except (AttributeError, TypeError, IndexError, KeyError) as exc:  # nothing checked the JSON
            raise invalid_response(conn.where, exc) from None

    def close(self) -> None:
        self._clients.close()

    def pass_through(
        self, request: ChatRequest, handled: tuple[str, ...] = (), ignored: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The options this SDK's ``create()`` takes; the rest are left out with a debug log."""
        return supported_options(request, self.accepted, handled=handled, ignored=ignored, why=self._not_accepted)

    def _read(self, response: Any, conn: Connection) -> ChatResult:
        try:
            if isinstance(response, str):  # JSON under another content type: the SDK returns the text
                response = json.loads(response)
            return self.result(response)
        except (AttributeError, TypeError, IndexError, KeyError, ValueError) as exc:  # nothing checked the JSON
            raise invalid_response(conn.where, exc) from None

    def _mapped(self, exc: Exception, request: ChatRequest, conn: Connection) -> Exception:
        """The chatplug error for ``exc``; ``exc`` itself if it is no provider failure (the
        pipeline reports it as a backend bug). Secrets are masked by the pipeline."""
        if isinstance(exc, ChatplugError):
            return exc
        # Mid-stream, an SDK may let its HTTP stack's exception through (anthropic's streams do).
        mapped = map_sdk_error(self.sdk, exc, request, conn.where, self.hints)
        return mapped or transport_error(exc, where=conn.where, timeout=request.timeout) or exc


def _client_key(conn: Connection, request: ChatRequest) -> tuple[Any, ...]:
    return (conn.base_url, request.timeout, request.max_retries)  # no secret: see ClientCache


def _credential(conn: Connection) -> tuple[str | None, str | None]:
    return (conn.api_key, conn.auth_token)


def _answered(request: ChatRequest) -> ChatRequest:
    """``request`` as its failure is reported once the stream has begun: the SDK retries no
    failure after the answer started (so the message counts no attempts)."""
    return dataclasses.replace(request, max_retries=0) if request.max_retries else request


def _http_stack(client_class: object, kind: str) -> ModuleType | None:
    """The HTTP stack an SDK is built on (httpx2; httpx for older SDKs): the one whose ``kind``
    (``"Client"``, ``"AsyncClient"``) its ``client_class`` is a subclass of. The SDK has imported it."""
    for name in ("httpx2", "httpx"):
        http = sys.modules.get(name)
        if http is not None and isinstance(client_class, type) and issubclass(client_class, getattr(http, kind)):
            return http
    return None


def _cut_off(conn: Connection) -> ServerError:
    """A stream that ended (cleanly, as HTTP goes) before the provider said why it stopped."""
    return ServerError(
        f"{conn.where} ended the stream before the reply was complete (no finish reason came). "
        "Retry; if it persists, check the server's log."
    )


def stream_error(body: object, where: str, hints: Mapping[int, str], model: str) -> APIStatusError:
    """The chatplug error for an error event inside a stream (the HTTP status was 200): its kind
    from the error type in ``body`` (``overloaded_error`` is an ``OverloadedError``)."""
    kind = _error_type(body)
    status = STREAM_ERROR_STATUS.get(kind or "", 500)
    detail = error_detail(body)
    said = detail if detail.endswith((".", "!", "?")) else f"{detail}."
    hint = hints.get(status, "").format(model=model)
    message = f"{where} reported an error during the stream ({kind or 'no type'}): {said}{' ' + hint if hint else ''}"
    if status in (400, 413) and any(marker in repr(body).lower() for marker in CONTEXT_MARKERS):
        return ContextLengthExceededError(
            f"{message} The conversation is longer than the model's context: shorten it or use a "
            "model with a longer context."
        )
    return status_class(status)(message)


def _error_type(body: object) -> str | None:
    """The error type in an error body: ``{"error": {"type"}}`` (Anthropic), or ``{"type",
    "code"}`` (OpenAI's inner error object, whose ``code`` is the more telling when known)."""
    if not isinstance(body, Mapping):
        return None
    inner = body.get("error")
    if isinstance(inner, Mapping):
        return _error_type(inner)
    code, kind = body.get("code"), body.get("type")
    if isinstance(code, str) and code in STREAM_ERROR_STATUS:
        return code
    return kind if isinstance(kind, str) else None


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
        if mapped is not None:  # not a connection failure at all: a redirect loop, a bad URL
            return mapped
        return APIConnectionError(
            f"could not connect to {where}{tries}. Check that the server runs and that the base URL is right."
        )
    if isinstance(exc, sdk.APIStatusError) and exc.status_code < 400:  # an error event in a 200 stream
        return stream_error(exc.body, where, hints, request.model)
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
    if isinstance(exc, sdk.APIError):  # e.g. an error event inside a 200 stream (openai)
        return stream_error(exc.body if exc.body is not None else exc.message, where, hints, request.model)
    return None
