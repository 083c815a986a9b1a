"""chatplug's exceptions: one tree, each class carrying the ``ErrorKind`` it maps to.

Backends raise these (mapping their SDK's own exceptions); the pipeline catches them
once and turns them into a failed ``LLMResponse``. ``LLMResponse.raise_for_error()`` raises
them again for callers who prefer exceptions.

ChatplugError
├── ConfigError                       config          bad setting, e.g. LLM_TEMPERATURE=hot
│   └── UnknownBackendError           config          no backend of that name is installed
├── InvalidInputError (ValueError)    invalid_input   the caller's arguments; nothing was sent
├── InvalidOutputError                invalid_output  a reply that does not fit the schema asked for, or
│                                                     tool arguments that are not JSON (raw text kept)
├── PluginError                       plugin          a backend plugin failed or misbehaved
└── APIError                                          the provider or the transport failed
    ├── APIConnectionError            connection      server not reachable
    │   └── APITimeoutError           timeout         no answer within the timeout
    ├── APIStatusError                server          an HTTP error status (status_code)
    │   ├── AuthenticationError       auth            401/403: key missing or wrong
    │   ├── NotFoundError             not_found       404: usually the model
    │   ├── BadRequestError           bad_request     400/422: the provider rejected the request
    │   │   └── ContextLengthExceededError  context_length
    │   ├── RateLimitError            rate_limit      429, with retry_after when the server said
    │   └── ServerError               server          5xx, or a reply that is none
    │       ├── OverloadedError       overloaded      503/529: try again later
    │       └── InvalidResponseError  server          a body the backend could not read
"""

from __future__ import annotations

from enum import Enum

#: The most of a backend's name an error shows before its message (``LLMResponse.error`` holds the
#: name and a message of at most 4,000 characters).
NAME_SHOWN = 200


class ErrorKind(str, Enum):
    """Why a call failed, for callers that branch on it (``response.error_kind == "timeout"``)."""

    CONNECTION = "connection"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    BAD_REQUEST = "bad_request"
    CONTEXT_LENGTH = "context_length"
    SERVER = "server"
    OVERLOADED = "overloaded"
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    CONFIG = "config"
    PLUGIN = "plugin"

    def __str__(self) -> str:
        return self.value


class ChatplugError(Exception):
    """Root of every chatplug error. ``str(e)`` is the message shown in ``LLMResponse.error``."""

    kind: ErrorKind = ErrorKind.PLUGIN
    finish_reason: str | None = None

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        finish_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.status_code = status_code
        self.retry_after = retry_after
        #: Why the provider stopped, when it answered with a refusal rather than a reply (a prompt
        #: blocked for safety: ``"content_filter"``): the failed response's ``finish_reason``.
        self.finish_reason = finish_reason

    def __str__(self) -> str:
        backend = self.backend
        if not backend:
            return self.message
        if len(backend) > NAME_SHOWN:  # a caller's unknown backend= can be any length: shown cut, as values are
            backend = f"{backend[:NAME_SHOWN]}... ({len(backend)} characters)"
        return f"{backend}: {self.message}"


class ConfigError(ChatplugError):
    kind = ErrorKind.CONFIG


class UnknownBackendError(ConfigError):
    pass


class InvalidInputError(ChatplugError, ValueError):
    kind = ErrorKind.INVALID_INPUT


class InvalidOutputError(ChatplugError):
    kind = ErrorKind.INVALID_OUTPUT


class PluginError(ChatplugError):
    kind = ErrorKind.PLUGIN


class APIError(ChatplugError):
    kind = ErrorKind.SERVER


class APIConnectionError(APIError):
    kind = ErrorKind.CONNECTION


class APITimeoutError(APIConnectionError):
    kind = ErrorKind.TIMEOUT


class APIStatusError(APIError):
    kind = ErrorKind.SERVER


class AuthenticationError(APIStatusError):
    kind = ErrorKind.AUTH


class NotFoundError(APIStatusError):
    kind = ErrorKind.NOT_FOUND


class BadRequestError(APIStatusError):
    kind = ErrorKind.BAD_REQUEST


class ContextLengthExceededError(BadRequestError):
    kind = ErrorKind.CONTEXT_LENGTH


class RateLimitError(APIStatusError):
    kind = ErrorKind.RATE_LIMIT


class ServerError(APIStatusError):
    kind = ErrorKind.SERVER


class OverloadedError(ServerError):
    kind = ErrorKind.OVERLOADED


class InvalidResponseError(ServerError):
    kind = ErrorKind.SERVER
