"""Reusable SDK clients: one per configuration, and async ones never shared across event loops.

A client per call costs tens of times a reused one (building an httpx client sets up SSL and a
connection pool). Sync clients are shared by all threads; async clients are bound to the event
loop that made them, so each running loop gets its own, closed when the loop shuts down, which
keeps repeated ``asyncio.run()`` working and leaves no socket open; a loop made and closed by
hand (``new_event_loop()`` ... ``close()``, which shuts down no async generators) closes them in its
``close()``.

A client is borrowed for one request with ``with cache.sync(key, ...) as client``. When a
credential changes (a rotated key), the next borrower gets a new client; the old one is closed
once the last request still using it returns, so no call in flight fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

C = TypeVar("C")
S = TypeVar("S")
A = TypeVar("A")


class _LoopClients:
    """The async clients of one event loop: those in use, and those replaced but not yet closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)
        self.slots: dict[Hashable, _Slot[Any]] = {}
        self.retired: set[_Slot[Any]] = set()
        self.closer: object = None


class _Slot(Generic[C]):
    """A client, the credential it was made with, and how many requests are using it."""

    __slots__ = ("client", "credential", "loop", "retired", "users")

    def __init__(self, client: C, credential: Hashable, loop: _LoopClients | None) -> None:
        self.client, self.credential, self.loop = client, credential, loop  # loop: None for sync clients
        self.users = 0
        self.retired = False


class Lease(Generic[C]):
    """One request's use of a cached client: ``with lease as client``. Returning the last
    lease of a replaced client closes it."""

    __slots__ = ("_cache", "_slot")

    def __init__(self, cache: ClientCache[Any, Any], slot: _Slot[C]) -> None:
        self._cache, self._slot = cache, slot

    def __enter__(self) -> C:
        return self._slot.client

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._cache._release(self._slot)


class ClientCache(Generic[S, A]):
    """Clients keyed by the settings that configure them (host, timeout ...), each made for one
    ``credential`` (never part of the key: a rotated key replaces its client instead of leaving
    one behind per rotation).

    ``make_sync(*args)`` and ``make_async(*args)`` build the clients; ``close_sync(client)`` and
    ``await close_async(client)`` close them (by default their ``close()`` method).
    """

    def __init__(
        self,
        make_sync: Callable[..., S],
        make_async: Callable[..., A],
        *,
        close_sync: Callable[[S], object] | None = None,
        close_async: Callable[[A], Awaitable[object]] | None = None,
    ) -> None:
        self._make_sync, self._make_async = make_sync, make_async
        self._close_sync: Callable[[S], object] = close_sync or (lambda client: client.close())  # type: ignore[attr-defined]
        self._close_async: Callable[[A], Awaitable[object]] = close_async or (lambda client: client.close())  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self._sync: dict[Hashable, _Slot[S]] = {}
        # Per loop: on the loop object itself where it takes attributes (the state dies with
        # the loop; uvloop's Loop is a Python subclass, and takes them), else in a weak
        # dictionary (a loop class with __slots__).
        self._attr = f"_chatplug_clients_{id(self)}"
        # (That dictionary keeps its loops alive, as its values hold them: only for such loops.)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()
        self._every_loop: weakref.WeakSet[_LoopClients] = weakref.WeakSet()
        self._closing: set[asyncio.Future[Any]] = set()  # the loop holds tasks only weakly

    # -- borrowing ----------------------------------------------------------------------

    def sync(self, key: Hashable, *args: object, credential: Hashable = None) -> Lease[S]:
        """Borrow the sync client for ``key`` and ``credential``, made with ``make_sync(*args)``."""
        with self._lock:
            slot = self._sync.get(key)
            if slot is None or slot.credential != credential:
                old, slot = slot, _Slot(self._make_sync(*args), credential, None)
                self._sync[key] = slot
                if old is not None:
                    self._retire(old)
            slot.users += 1
        return Lease(self, slot)

    def async_(self, key: Hashable, *args: object, credential: Hashable = None) -> Lease[A]:
        """Borrow the async client for ``key`` and ``credential`` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients_of(loop)
            slot = clients.slots.get(key)
            if slot is None or slot.credential != credential:
                old, slot = slot, _Slot(self._make_async(*args), credential, clients)
                clients.slots[key] = slot
                if old is not None:
                    self._retire(old)
            slot.users += 1
        return Lease(self, slot)

    def _clients_of(self, loop: asyncio.AbstractEventLoop) -> _LoopClients:
        clients: _LoopClients | None = getattr(loop, self._attr, None) or self._loops.get(loop)
        if clients is None:
            clients = _LoopClients(loop)
            try:
                setattr(loop, self._attr, clients)
            except AttributeError:
                self._loops[loop] = clients
            clients.closer = _close_at_shutdown(self, clients)
            _close_with(loop, clients)
            self._every_loop.add(clients)  # weakly: for close()
        return clients

    def _release(self, slot: _Slot[Any]) -> None:
        with self._lock:
            slot.users -= 1
            done = slot.retired and slot.users == 0
        if done:
            self._close(slot)

    def _retire(self, slot: _Slot[Any]) -> None:
        """Replace ``slot`` (under the lock): closed now if unused, else by its last user."""
        slot.retired = True
        if slot.users == 0:
            self._close(slot)

    def _close(self, slot: _Slot[Any]) -> None:
        owner = slot.loop
        if owner is None:
            self._close_sync(slot.client)
            return
        owner.retired.add(slot)  # closed by the task below, or else by the loop's shutdown closer

        async def close() -> None:
            if slot in owner.retired:
                owner.retired.discard(slot)
                await self._close_async(slot.client)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is None or running is not owner.loop():  # not on its loop: its shutdown closer closes it
            return
        closing = running.create_task(close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    # -- closing ------------------------------------------------------------------------

    def __len__(self) -> int:
        """How many sync clients are cached."""
        return len(self._sync)

    def close(self) -> None:
        """Close every client, each once its requests return: sync ones now, async ones on their
        own loop (now if it is the running one, else when it shuts down). New calls get new ones."""
        with self._lock:
            slots = list(self._sync.values())
            self._sync.clear()
            for clients in list(self._every_loop):
                slots += clients.slots.values()
                clients.slots.clear()
            for slot in slots:
                self._retire(slot)


def _close_at_shutdown(cache: ClientCache[Any, Any], clients: _LoopClients) -> object:
    """Close ``clients`` when the running loop shuts down; the returned object must be kept as
    long as the loop lives (``clients`` keeps it).

    asyncio has no loop-close callback, but ``asyncio.run()`` (like every runner that calls
    ``loop.shutdown_asyncgens()``) closes each async generator first iterated on the loop, while
    the loop still runs: a generator parked at its ``yield`` is that callback. It is stepped to
    the ``yield`` by hand, without a task: a task would hold the loop, and the loop would never
    be freed.
    """

    async def closer() -> AsyncIterator[None]:
        try:
            yield
        finally:
            while clients.slots or clients.retired:
                slot = clients.slots.popitem()[1] if clients.slots else clients.retired.pop()
                await cache._close_async(slot.client)

    generator = closer()
    step = generator.__anext__()  # registers the generator with the running loop
    with contextlib.suppress(StopIteration):
        step.send(None)  # type: ignore[attr-defined]  # runs the body to the yield
    return generator


def _close_with(loop: asyncio.AbstractEventLoop, clients: _LoopClients) -> None:
    """Close ``clients`` in ``loop.close()`` too, for a loop closed without ``shutdown_asyncgens()``
    (``new_event_loop()``, ``run_until_complete()``, ``close()``): its sockets would otherwise stay
    open until collected, each with an "unclosed transport" warning. Nothing else changes:
    ``asyncio.run()`` has closed them by then, and a loop that takes no attributes (a class with ``__slots__``) is
    left as it is. The wrapper holds the loop weakly, so the loop is still freed with its last user.
    """
    if "close" in getattr(loop, "__dict__", {"close": None}):  # no instance dict, or patched already
        return
    close = type(loop).close
    ref = weakref.ref(loop)

    def close_clients_first() -> None:
        owner = ref()
        if owner is None:
            return
        if clients.slots or clients.retired:
            _close_before(owner, clients)
        close(owner)

    loop.close = close_clients_first  # type: ignore[method-assign]


def _close_before(loop: asyncio.AbstractEventLoop, clients: _LoopClients) -> None:
    """Run the loop once more, to close ``clients`` on it, if it can run: not running, not closed,
    and no other loop running in this thread (then they are left to be collected, as before)."""
    if loop.is_running() or loop.is_closed():
        return
    try:
        asyncio.get_running_loop()
        return  # a loop runs in this thread: this one cannot run here
    except RuntimeError:
        pass
    closer = clients.closer
    with contextlib.suppress(Exception):
        if isinstance(closer, AsyncGenerator):
            loop.run_until_complete(closer.aclose())  # its ``finally`` closes every client
