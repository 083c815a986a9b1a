"""The values that cross chatplug's boundaries.

``LLMResponse`` is what callers get back. ``ChatRequest`` and ``ChatResult`` are what the
dispatch layer hands a backend and what a backend hands back: a backend never sees raw user
input (it is validated and copied first) and never builds an ``LLMResponse`` itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from ._exceptions import ChatplugError

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

    role: Role
    content: str


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
    CONFIG = "config"
    PLUGIN = "plugin"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ChatRequest:
    """A validated, fully resolved request, as every backend receives it.

    ``messages`` are fresh copies of the caller's, so a backend may not mutate them by
    accident. ``options`` holds the extra keyword arguments the caller passed (``seed``,
    ``stop``, ``top_p``, ``num_ctx`` ...); each backend maps the ones its provider knows.
    """

    messages: tuple[Message, ...]
    model: str
    temperature: float
    max_tokens: int
    timeout: float
    options: Mapping[str, Any] = field(default_factory=dict)
    backend: str = ""
    #: Retries of a failed request that the provider SDK may make (rate limits, 5xx,
    #: connection errors), with the SDK's own backoff. The Ollama SDK does not retry.
    max_retries: int = 2


@dataclass(frozen=True)
class ChatResult:
    """What a backend returns on success. Timing and error handling are the dispatcher's."""

    content: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class LLMResponse:
    """The result of every chatplug call, successful or not.

    The first six fields are the seed's contract, in its order. A failed call has
    ``success=False``, an ``error`` that says what happened and what to do, and an
    ``error_kind`` to branch on; ``raise_for_error()`` turns it into an exception.
    """

    content: str
    tokens_used: int
    response_time: float
    model_used: str
    success: bool
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    backend: str | None = None
    error_kind: ErrorKind | None = None
    retry_after: float | None = None
    exception: ChatplugError | None = field(default=None, repr=False, compare=False)

    def raise_for_error(self) -> LLMResponse:
        """Return ``self`` if the call succeeded, else raise its ``ChatplugError``."""
        if self.exception is not None:
            raise self.exception
        return self

    def to_dict(self) -> dict[str, Any]:
        """The response as JSON-ready data (the exception object left out)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "exception"}
        if self.error_kind is not None:
            data["error_kind"] = self.error_kind.value
        return data
