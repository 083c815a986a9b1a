"""chatplug: one stateless way to ask any large language model for a chat completion.

>>> from chatplug import generate_completion_sync
>>> response = generate_completion_sync("Why is the sky blue?")
>>> response.content if response.success else response.error

Backends are plugins (``chatplug.hookimpl``, ``chatplug.ChatBackend``); what a backend needs
beyond the protocol is in ``chatplug.toolkit``.
"""

import logging
import sys
from typing import TYPE_CHECKING, Any

from ._core.backend import ChatBackend
from ._core.exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ChatplugError,
    ConfigError,
    ContextLengthExceededError,
    ErrorKind,
    InvalidInputError,
    InvalidOutputError,
    InvalidResponseError,
    NotFoundError,
    OverloadedError,
    PluginError,
    RateLimitError,
    ServerError,
    UnknownBackendError,
)
from ._core.settings import Settings, settings
from ._core.values import ChatRequest, ChatResult, LLMResponse, Message
from ._pipeline.api import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    stream_completion_async,
    stream_completion_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

if TYPE_CHECKING:
    import pluggy

    from ._core.chunks import ChatChunk
    from ._core.tools import ResponseFormat, Tool, ToolCall, ToolCallDelta
    from ._extras.batch import (
        BatchProgress,
        generate_batch_async,
        generate_batch_sync,
        iter_batch_async,
        iter_batch_sync,
    )
    from ._extras.tool_loop import ToolRun, run_tools_async, run_tools_sync
    from ._pipeline.stream import AsyncStream, Stream
    from ._plugins.manager import Plugins

    hookimpl: pluggy.HookimplMarker
    __version__: str

# Imported on first use: tools are not needed to import chatplug, and they cost it ~30%; batches
# bring asyncio and threading.
_LAZY = {
    "ChatChunk": "._core.chunks",
    "AsyncStream": "._pipeline.stream",
    "Stream": "._pipeline.stream",
    "BatchProgress": "._extras.batch",
    "generate_batch_async": "._extras.batch",
    "generate_batch_sync": "._extras.batch",
    "iter_batch_async": "._extras.batch",
    "iter_batch_sync": "._extras.batch",
    "ToolRun": "._extras.tool_loop",
    "run_tools_async": "._extras.tool_loop",
    "run_tools_sync": "._extras.tool_loop",
    "ResponseFormat": "._core.tools",
    "Tool": "._core.tools",
    "ToolCall": "._core.tools",
    "ToolCallDelta": "._core.tools",
}

# A library logs, the application decides where it goes (Python logging HOWTO).
logging.getLogger("chatplug").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # Made on first use: pluggy and importlib.metadata would double the cost of `import chatplug`,
    # and only plugins (hookimpl) and version checks need them.
    if name == "hookimpl":
        from .hookspecs import hookimpl

        return hookimpl
    if name == "__version__":
        from importlib.metadata import version

        return version("chatplug")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups find it without this function
        return value
    raise AttributeError(f"module 'chatplug' has no attribute {name!r}")


def _manager() -> "Plugins":
    """The plugin manager, on first use: ``import chatplug`` does not import it."""
    from ._plugins import plugins

    return plugins()


def close() -> None:
    """Close every backend's pooled clients and loaded models (they are made again on the next
    call) and the cache's connections, and forget which fallback targets were cooling down."""
    from ._pipeline.retry import reset_cooldowns

    _manager().close()
    reset_cooldowns()
    if "chatplug._pipeline.cache" in sys.modules:  # only if a cache was used: importing it costs sqlite3
        sys.modules["chatplug._pipeline.cache"].close()


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object (a module or any object with ``@hookimpl`` functions) in this
    process, as an entry point would: its backends and observers take effect at once. For tests
    and applications; returns the name it is registered under (``unregister_plugin`` takes it)."""
    return _manager().register(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with ``register_plugin``, with its backends and observers."""
    _manager().unregister(name)


def backend_names() -> list[str]:
    """The names of the installed backends, sorted."""
    manager = _manager()
    manager.load()
    return sorted(manager.backends.entries)


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "AsyncStream",
    "BatchProgress",
    "BadRequestError",
    "ChatBackend",
    "ChatChunk",
    "ChatRequest",
    "ChatResult",
    "ChatplugError",
    "ConfigError",
    "ContextLengthExceededError",
    "ErrorKind",
    "InvalidInputError",
    "InvalidOutputError",
    "InvalidResponseError",
    "LLMResponse",
    "Message",
    "NotFoundError",
    "OverloadedError",
    "PluginError",
    "RateLimitError",
    "ResponseFormat",
    "ServerError",
    "Settings",
    "Stream",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolRun",
    "UnknownBackendError",
    "__version__",
    "backend_names",
    "close",
    "generate_batch_async",
    "generate_batch_sync",
    "generate_completion_async",
    "generate_completion_sync",
    "generate_completion_with_messages_async",
    "generate_completion_with_messages_sync",
    "hookimpl",
    "iter_batch_async",
    "iter_batch_sync",
    "register_plugin",
    "run_tools_async",
    "run_tools_sync",
    "settings",
    "stream_completion_async",
    "stream_completion_sync",
    "stream_completion_with_messages_async",
    "stream_completion_with_messages_sync",
    "unregister_plugin",
]
