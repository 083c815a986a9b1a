"""Reusable SDK clients: one per configuration, and async ones never shared across event loops.

A client per call costs tens of times a reused one (building an httpx client sets up SSL and
a connection pool). Sync clients are shared by all threads; async clients are bound to the
event loop that made them, so each running loop gets its own, dropped with the loop, which
keeps repeated ``asyncio.run()`` working.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

S = TypeVar("S")
A = TypeVar("A")


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
            per_loop = self._async.setdefault(loop, {})
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
