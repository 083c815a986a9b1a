"""Reusable SDK clients: one per configuration, and async ones never shared across event loops.

A client per call costs tens of times a reused one (building an httpx client sets up SSL and a
connection pool). Sync clients are shared by all threads; async clients are bound to the event
loop that made them, so each running loop gets its own, closed when the loop shuts down, which
keeps repeated ``asyncio.run()`` working and leaves no socket open.

A loop's clients are kept in ``_LOOPS``, a dict keyed by the loop, never on the loop object. Not a
``WeakKeyDictionary``: the clients hold their loop, so its entry would never go. The entry goes
when the loop shuts down instead: ``asyncio.run()`` (like every runner) calls
``loop.shutdown_asyncgens()``, which closes an async generator chatplug parks on the loop
(``_close_at_shutdown``); it closes the clients of every cache on that loop and removes the
entry, and the loop is freed.

A loop made and closed by hand (``new_event_loop()``, ``run_until_complete()``, ``close()``) shuts
down no async generators. For it, and only where the loop object takes it, chatplug puts a
``close`` on the loop object (``_close_with``) that closes the clients first, while the loop can
still run them: otherwise every such loop would leave its sockets open until they were collected,
each with an "unclosed transport" ``ResourceWarning``. That is the one attribute chatplug sets on
a loop. It is skipped for a loop whose instance has a ``close`` of its own already or takes no
attribute (a class with ``__slots__``, or a ``__setattr__`` that refuses): such a loop, closed by
hand, loses only that. Its clients are dropped unclosed (their sockets close when collected), and
its entry with them, when the next loop makes clients or at ``chatplug.close()``.

A client is borrowed for one request with ``with cache.sync(key, ...) as client``. When a
credential changes (a rotated key), the next borrower gets a new client; the old one is closed
once the last request still using it returns, so no call in flight fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Generic, TypeVar

C = TypeVar("C")
S = TypeVar("S")
A = TypeVar("A")


class _Loop:
    """What chatplug keeps for one event loop (in ``_LOOPS``): the clients of each cache on it, and
    the async generator that closes them all when the loop shuts down."""

    __slots__ = ("caches", "closer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.caches: dict[ClientCache[Any, Any], _LoopClients] = {}
        self.closer: AsyncGenerator[None, None] | None = None


class _LoopClients:
    """The async clients of one cache on one loop: those in use, and those replaced but not yet closed."""

    __slots__ = ("owner", "retired", "slots")

    def __init__(self, owner: _Loop) -> None:
        self.owner = owner
        self.slots: dict[Hashable, _Slot[Any]] = {}
        self.retired: set[_Slot[Any]] = set()


#: The event loops that have clients, each until it shuts down or is closed (see the module's docstring).
_LOOPS: dict[asyncio.AbstractEventLoop, _Loop] = {}
_loops_lock = threading.Lock()


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
        """This cache's clients on ``loop``, the running one (under the cache's lock)."""
        entry = _LOOPS.get(loop)
        if entry is None:
            entry = _watch(loop)
        clients = entry.caches.get(self)
        if clients is None:
            clients = entry.caches[self] = _LoopClients(entry)
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
        if running is None or running is not owner.owner.loop:  # not on its loop: its shutdown closer closes it
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
        own loop (now if it is the running one, else when it shuts down). New calls get new ones.
        The clients of loops closed already, which can close nothing, are dropped."""
        with self._lock:
            slots = list(self._sync.values())
            self._sync.clear()
            with _loops_lock:
                _sweep()
                entries = list(_LOOPS.values())
            for entry in entries:
                clients = entry.caches.get(self)
                if clients is not None:
                    slots += clients.slots.values()
                    clients.slots.clear()
            for slot in slots:
                self._retire(slot)


def _watch(loop: asyncio.AbstractEventLoop) -> _Loop:
    """A new entry for ``loop``, the running one: closed with it (see the module's docstring). The
    entries of loops closed since, whose clients nothing could close, are dropped first."""
    entry = _Loop(loop)
    with _loops_lock:
        _sweep()
        _LOOPS[loop] = entry
    entry.closer = _close_at_shutdown(entry)
    _close_with(loop)
    return entry


def _sweep() -> None:
    """Drop the entries of closed loops (under ``_loops_lock``): loops closed by hand that took no
    ``close`` of chatplug's (``_close_with``). Their clients cannot be closed any more, on a loop
    that cannot run: they are left to be collected, and the loop with them."""
    for loop in [loop for loop in _LOOPS if loop.is_closed()]:
        del _LOOPS[loop]


def _close_at_shutdown(entry: _Loop) -> AsyncGenerator[None, None]:
    """Close every client in ``entry`` when the running loop shuts down, and remove the entry; the
    returned generator must be kept as long as the loop lives (``entry`` keeps it).

    asyncio has no loop-close callback, but ``asyncio.run()`` (like every runner that calls
    ``loop.shutdown_asyncgens()``) closes each async generator first iterated on the loop, while
    the loop still runs: a generator parked at its ``yield`` is that callback. It is stepped to
    the ``yield`` by hand, without a task: a task would hold the loop, and the loop would never
    be freed.
    """

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            try:
                for cache, clients in list(entry.caches.items()):
                    while clients.slots or clients.retired:
                        slot = clients.slots.popitem()[1] if clients.slots else clients.retired.pop()
                        await cache._close_async(slot.client)
            finally:
                with _loops_lock:
                    if _LOOPS.get(entry.loop) is entry:
                        del _LOOPS[entry.loop]

    generator = closer()
    step = generator.__anext__()  # registers the generator with the running loop
    with contextlib.suppress(StopIteration):
        step.send(None)  # runs the body to the yield
    return generator


def _close_with(loop: asyncio.AbstractEventLoop) -> None:
    """Give ``loop`` a ``close()`` that first closes its clients (``_close_before``), for a loop
    closed without ``shutdown_asyncgens()``; nothing else changes: ``asyncio.run()`` has closed them
    by then. It holds the loop weakly (so the loop is still freed with its last user), finds the
    clients in ``_LOOPS`` when called, and then calls the loop class's own ``close``. Only where
    the loop takes it: not for one that already has a ``close`` of its own on the instance (one
    of chatplug's, from an earlier entry, serves every later one), nor for one that refuses the
    attribute (see the module's docstring)."""
    try:
        if "close" in vars(loop):
            return
        ref = weakref.ref(loop)

        def close_clients_first() -> None:
            owner = ref()
            if owner is None:
                return
            entry = _LOOPS.get(owner)
            if entry is not None:
                _close_before(owner, entry)
            type(owner).close(owner)

        loop.close = close_clients_first  # type: ignore[method-assign]
    except Exception:  # no instance dict, no weak reference, or a loop that refuses attributes
        return


def _close_before(loop: asyncio.AbstractEventLoop, entry: _Loop) -> None:
    """Run the loop once more, to close its clients on it, if it can run: not running, not closed,
    and no other loop running in this thread (then they are left to be collected, as before)."""
    if loop.is_running() or loop.is_closed():
        return
    try:
        asyncio.get_running_loop()
        return  # a loop runs in this thread: this one cannot run here
    except RuntimeError:
        pass
    closer = entry.closer
    if closer is not None:
        with contextlib.suppress(Exception):
            loop.run_until_complete(closer.aclose())  # its ``finally`` closes every client
