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


class SyncCloseable(Protocol):
    def close(self) -> Any: ...


class AsyncCloseable(Protocol):
    def close(self) -> Awaitable[Any]: ...


S = TypeVar("S", bound=SyncCloseable)
A = TypeVar("A", bound=AsyncCloseable)


class ClientCache(Generic[S, A]):
    """Clients keyed by the settings that configure them (host, timeout ...), each made for
    one ``credential``. A changed credential (a rotated key) makes a new client that replaces
    and closes the old one: were the credential part of the key, every rotation would leave
    a client and its connection pool behind until ``chatplug.close()``."""

    def __init__(self, make_sync: Callable[..., S], make_async: Callable[..., A]) -> None:
        self._make_sync = make_sync
        self._make_async = make_async
        self._lock = threading.Lock()
        # key -> (credential, client)
        self._sync: dict[Hashable, tuple[Hashable, S]] = {}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, tuple[Hashable, A]]] = (
            weakref.WeakKeyDictionary()
        )
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[object, ...]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Future[Any]] = set()  # the loop holds tasks only weakly

    def sync(self, key: Hashable, *args: object, credential: Hashable = None) -> S:
        """The sync client for ``key`` and ``credential``, made with ``make_sync(*args)``."""
        entry = self._sync.get(key)
        if entry is not None and entry[0] == credential:
            return entry[1]
        with self._lock:
            entry = self._sync.get(key)
            if entry is not None and entry[0] == credential:
                return entry[1]
            client = self._make_sync(*args)
            self._sync[key] = (credential, client)
        if entry is not None:
            # A request still running on the old client as its credential changes fails; a
            # rotated credential is usually being revoked anyway.
            entry[1].close()
        return client

    def async_(self, key: Hashable, *args: object, credential: Hashable = None) -> A:
        """The async client for ``key`` and ``credential`` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            per_loop = self._async.get(loop)
            if per_loop is None:
                per_loop = self._async[loop] = {}
                self._closers[loop] = _close_at_shutdown(per_loop)
            entry = per_loop.get(key)
            if entry is not None and entry[0] == credential:
                return entry[1]
            client = self._make_async(*args)
            per_loop[key] = (credential, client)
        if entry is not None:  # no longer in per_loop, so the shutdown closer would miss it
            closing = asyncio.ensure_future(entry[1].close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return client

    def __len__(self) -> int:
        """How many sync clients are cached."""
        return len(self._sync)

    def clear(self) -> list[S]:
        """Forget every client; return the sync ones so the caller can close them."""
        with self._lock:
            clients = [client for _, client in self._sync.values()]
            self._sync.clear()
            self._async = weakref.WeakKeyDictionary()
        return clients


def _close_at_shutdown(clients: dict[Hashable, tuple[Hashable, A]]) -> tuple[object, ...]:
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
                _, (_, client) = clients.popitem()
                await client.close()

    generator = closer()
    # Calling __anext__() registers the generator with the running loop; the task steps it
    # into the try block, where it waits at the yield.
    parked = asyncio.ensure_future(generator.__anext__())
    return generator, parked

