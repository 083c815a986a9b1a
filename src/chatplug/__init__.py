"""chatplug: one stateless way to ask any large language model for a chat completion.

>>> from chatplug import generate_completion_sync
>>> response = generate_completion_sync("Why is the sky blue?")
>>> response.content if response.success else response.error
"""

import logging

from ._api import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)
from ._backend import ChatBackend
from ._config import Settings, settings
from ._exceptions import (
    APIConnectionError,
    APIError,
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
    PluginError,
    RateLimitError,
    ServerError,
    UnknownBackendError,
)
from ._plugins import registry
from ._types import ChatRequest, ChatResult, ErrorKind, LLMResponse, Message
from .hookspecs import hookimpl

__version__ = "0.1.0"

# A library logs, the application decides where it goes (Python logging HOWTO).
logging.getLogger("chatplug").addHandler(logging.NullHandler())


def close() -> None:
    """Close every backend's pooled clients (they are reopened on the next call)."""
    registry.close()


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatBackend",
    "ChatRequest",
    "ChatResult",
    "ChatplugError",
    "ConfigError",
    "ContextLengthExceededError",
    "ErrorKind",
    "InvalidInputError",
    "InvalidResponseError",
    "LLMResponse",
    "Message",
    "NotFoundError",
    "OverloadedError",
    "PluginError",
    "RateLimitError",
    "ServerError",
    "Settings",
    "UnknownBackendError",
    "close",
    "generate_completion_async",
    "generate_completion_sync",
    "generate_completion_with_messages_async",
    "generate_completion_with_messages_sync",
    "hookimpl",
    "settings",
]
