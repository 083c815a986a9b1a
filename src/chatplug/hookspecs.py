"""The hooks a chatplug plugin can implement. Decorate implementations with ``chatplug.hookimpl``.

A plugin is any module named in the ``chatplug`` entry-point group, e.g. in its pyproject.toml::

    [project.entry-points.chatplug]
    mybackend = "chatplug_mybackend"

chatplug's own backends are registered exactly this way. A hook implementation that raises
is logged on the ``chatplug`` logger and skipped; it never breaks a call or another plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._core.backend import ChatBackend
    from ._core.values import ChatRequest, LLMResponse

hookspec = pluggy.HookspecMarker("chatplug")
hookimpl = pluggy.HookimplMarker("chatplug")


@hookspec
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    """Register backends: call ``register(name, factory)`` once per backend.

    ``factory`` is called with no arguments the first time ``name`` is used, and its
    ``ChatBackend`` instance is then reused for every call; so import heavy SDKs in the
    factory (a ``ChatBackend`` subclass is a fine factory), not at module level.
    """


@hookspec
def on_request(request: ChatRequest) -> None:
    """Called with each validated request just before its backend is called.

    ``request.backend`` names the backend. Use it for logging, metrics and tracing; it cannot
    change the request (``ChatRequest`` is frozen).
    """


@hookspec
def on_response(request: ChatRequest | None, response: LLMResponse) -> None:
    """Called with every response, successful or failed, just before it is returned.

    ``response`` carries timing (``response_time``), tokens, ``success`` and ``error_kind``.
    ``request`` is ``None`` when the call failed before a request could be built (bad input,
    bad configuration, unknown backend). An async call cancelled while it waits gets no
    ``on_response``: cancellation propagates to its caller, and there is no response.
    """
