"""The one protocol every backend implements, built-in or plugin.

A backend turns a ``ChatRequest`` into a ``ChatResult``, or raises a ``ChatplugError``
subclass (``chatplug.NotFoundError``, ``chatplug.APIConnectionError`` ...) that says what went
wrong and what to do. Validation, defaults, timing, logging and the conversion into an
``LLMResponse`` happen once, in the pipeline, never in a backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, ClassVar

from .values import ChatRequest, ChatResult

if TYPE_CHECKING:
    from .chunks import ChatChunk


class ChatBackend(ABC):
    """Base class of all backends: a blocking ``complete`` and a native async ``acomplete``.

    One instance serves every call to its backend name, from many threads and event loops:
    keep reusable clients on it, not per call. Import the provider SDK lazily (inside a
    method), so that registering the backend costs nothing until it is used.
    """

    #: Model used when neither the call nor ``LLM_MODEL_NAME`` names one.
    default_model: ClassVar[str | None] = None

    #: What the backend can do beyond text: ``"tools"`` (``request.tools``, tool messages),
    #: ``"images"`` (image parts), ``"response_format"`` (``request.response_format``). A call
    #: that needs one the backend does not declare fails with ``invalid_input`` before anything
    #: is sent, never by silently dropping it.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    #: Whether the sync methods end by ``request.deadline`` on their own (their HTTP client made
    #: with ``chatplug.toolkit.deadline_client``, a sync stream's first chunk read with
    #: ``first_within``, or a check of their own). When ``False`` (the default, the safe one), the
    #: pipeline runs each sync ``complete()``, and the wait for a sync stream's first chunk, in a
    #: worker thread and stops waiting at the deadline: the call returns ``timeout`` on time, and
    #: the backend's work finishes in the background, its result dropped. Async calls need
    #: neither: they are cancelled on the event loop at the deadline.
    bounds_deadline: ClassVar[bool] = False

    @abstractmethod
    def complete(self, request: ChatRequest) -> ChatResult:
        """Send ``request`` and wait for the whole reply."""

    @abstractmethod
    async def acomplete(self, request: ChatRequest) -> ChatResult:
        """Send ``request`` without blocking the event loop."""

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """Send ``request`` and yield the reply as it comes: a generator, or any iterator of
        ``ChatChunk``s. When the caller closes its stream early, the pipeline calls the
        iterator's ``close()`` if it has one, as a generator does: put the HTTP response in a
        ``with`` inside the generator, so that it closes at once. An exception raised here, or
        before the first chunk, is an attempt that may be retried. The default runs ``complete``
        and yields the whole reply as one chunk, so a backend without streaming still streams."""
        yield _whole(self.complete(request))

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The async twin of ``stream``: an async generator, or a plain ``def`` returning any
        async iterator (its ``aclose()`` awaited, if it has one, when the caller stops early);
        by default ``acomplete`` as one chunk."""
        yield _whole(await self.acomplete(request))

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release clients and connections. Called by ``chatplug.close()``."""

    def endpoint(self, request: ChatRequest) -> str:
        """Where ``request`` would be sent: the base URL (or host, or model file) as configured
        for this call, e.g. ``OPENAI_BASE_URL``. The response cache keys on it, so that two
        servers serving the same model name never answer from each other's entries. Never a
        credential: no API key or token (a ``user:password@`` in a URL is dropped by chatplug).
        Called once per call when ``LLM_CACHE`` is set, before anything is sent: read settings,
        do no I/O. The default, ``""``, says nothing: every endpoint shares one set of entries."""
        return ""


def _whole(result: ChatResult) -> ChatChunk:
    from .chunks import whole_chunk  # on first use: only streams need it

    if not isinstance(result, ChatResult):  # the pipeline names the plugin that did this
        raise TypeError(f"complete() returned {type(result).__name__}, not a chatplug.ChatResult")
    return whole_chunk(result)
