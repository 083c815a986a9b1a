"""Reusable SDK clients: one per configuration, and async ones never shared across event loops.

A client per call costs tens of times a reused one (building an httpx client sets up SSL and
a connection pool). Sync clients are shared by all threads; async clients are bound to the
event loop that made them, so each running loop gets its own, closed when the loop shuts
down, which keeps repeated ``asyncio.run()`` working and leaves no socket open.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar


class AsyncCloseable(Protocol):
    def close(self) -> Awaitable[Any]: ...


S = TypeVar("S")
A = TypeVar("A", bound=AsyncCloseable)


class ClientCache(Generic[S, A]):
    """Clients keyed by whatever configures them (host, timeout, key ...)."""

    def __init__(self, make_sync: Callable[..., S], make_async: Callable[..., A]) -> None:
        self._make_sync = make_sync
        self._make_async = make_async
        self._lock = threading.Lock()
        self._sync: dict[Hashable, S] = {}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, A]] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[object, ...]] = (
            weakref.WeakKeyDictionary()
        )

    def sync(self, key: Hashable, *args: object) -> S:
        """The sync client for ``key``, made with ``make_sync(*args)`` the first time."""
        client = self._sync.get(key)
        if client is None:
            with self._lock:
                client = self._sync.get(key)
                if client is None:
                    client = self._sync[key] = self._make_sync(*args)
        return client

    def async_(self, key: Hashable, *args: object) -> A:
        """The async client for ``key`` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            per_loop = self._async.get(loop)
            if per_loop is None:
                per_loop = self._async[loop] = {}
                self._closers[loop] = _close_at_shutdown(per_loop)
            client = per_loop.get(key)
            if client is None:
                client = per_loop[key] = self._make_async(*args)
        return client

    def clear(self) -> list[S]:
        """Forget every client; return the sync ones so the caller can close them."""
        with self._lock:
            clients = list(self._sync.values())
            self._sync.clear()
            self._async = weakref.WeakKeyDictionary()
        return clients


def _close_at_shutdown(clients: dict[Hashable, A]) -> tuple[object, ...]:
    """Close ``clients`` when the running loop shuts down; the caller keeps what this returns
    alive as long as the loop (the loop itself holds both only weakly).

    asyncio has no loop-close callback, but ``asyncio.run()`` (like every runner that calls
    ``loop.shutdown_asyncgens()``) closes each async generator first iterated on the loop,
    while the loop still runs: a generator parked at its ``yield`` is that callback.
    """

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            while clients:
                await clients.popitem()[1].close()

    generator = closer()
    # Calling __anext__() registers the generator with the running loop; the task steps it
    # into the try block, where it waits at the yield.
    parked = asyncio.ensure_future(generator.__anext__())
    return generator, parked

