"""The toolkit's client cache: one client per configuration, async ones per event loop and closed
with it, a rotated credential replacing its client without failing the requests still using it."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

from chatplug._http.clients import _LOOPS
from chatplug.toolkit import ClientCache


class SyncClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class AsyncClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class SealedLoop(asyncio.SelectorEventLoop):
    """An event loop that takes no attribute from outside once made, as a loop class with
    ``__slots__`` would not: no new public one (such as a ``close`` of its own) and none named
    ``_chatplug...``. Its own class's attributes are set as usual."""

    def __init__(self) -> None:
        super().__init__()
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        outside = not name.startswith("_") or name.startswith("_chatplug")
        if outside and getattr(self, "_sealed", False) and name not in vars(self):
            raise AttributeError(f"{type(self).__name__} takes no attribute {name!r}")
        super().__setattr__(name, value)


def make_cache(made: list[AsyncClient]) -> ClientCache[SyncClient, AsyncClient]:
    def make_async(*args: object) -> AsyncClient:
        made.append(AsyncClient())
        return made[-1]

    return ClientCache(lambda *args: SyncClient(), make_async)


def borrow_async(cache: ClientCache[SyncClient, AsyncClient], key: str, credential: str | None = None) -> AsyncClient:
    with cache.async_(key, credential=credential) as client:
        return client


def test_async_clients_are_reused_on_a_loop_and_closed_when_it_shuts_down() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)

    async def use() -> None:
        assert borrow_async(cache, "a") is borrow_async(cache, "a")
        assert borrow_async(cache, "b") is not borrow_async(cache, "a")
        assert not any(client.closed for client in made[-2:])  # open while their loop runs

    asyncio.run(use())
    asyncio.run(use())  # a new loop gets new clients
    assert len(made) == 4
    assert all(client.closed for client in made)


def test_a_finished_loop_is_freed() -> None:
    """The cache keeps nothing that holds a loop alive: 200 asyncio.run() leave no loop behind."""
    cache = make_cache([])
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def use() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        borrow_async(cache, "a")

    for _ in range(200):
        asyncio.run(use())
    gc.collect()
    assert sum(ref() is not None for ref in loops) == 0


def test_sync_clients_are_shared_by_threads() -> None:
    cache = make_cache([])
    seen: list[SyncClient] = []

    def borrow() -> None:
        with cache.sync("k") as client:
            seen.append(client)

    threads = [threading.Thread(target=borrow) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1
    cache.close()
    assert seen[0].closed
    with cache.sync("k") as client:
        assert client is not seen[0] and not client.closed


def test_a_new_credential_replaces_the_client_and_closes_the_old_one_after_its_requests() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)
    with cache.sync("k", credential="key-1") as first:
        with cache.sync("k", credential="key-1") as again:
            assert again is first
        with cache.sync("k", credential="key-2") as second:
            assert second is not first
            assert not first.closed  # a request still uses it: it stays open until that returns
        assert not first.closed
    assert first.closed and not second.closed
    assert len(cache) == 1

    async def rotate() -> None:
        with cache.async_("k", credential="key-1") as old:
            new = borrow_async(cache, "k", credential="key-2")
            assert new is not old and not old.closed  # in use
        await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()})  # the close scheduled on release
        assert old.closed and not new.closed

    asyncio.run(rotate())
    assert len(made) == 2 and all(client.closed for client in made)  # the new one at loop shutdown


def test_close_while_a_loop_runs_elsewhere_closes_its_clients_at_its_shutdown() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)

    async def use() -> None:
        borrow_async(cache, "a")
        await asyncio.to_thread(cache.close)  # chatplug.close() from another thread
        assert not made[0].closed  # not on its loop: left to the loop's shutdown
        assert borrow_async(cache, "a") is not made[0]  # new calls get a new client

    asyncio.run(use())
    assert len(made) == 2 and all(client.closed for client in made)


def borrow_on(loop: asyncio.AbstractEventLoop, *caches: ClientCache[SyncClient, AsyncClient]) -> None:
    async def borrow() -> None:
        for cache in caches:
            borrow_async(cache, "a")

    loop.run_until_complete(borrow())


def freed(loop: weakref.ref[asyncio.AbstractEventLoop]) -> bool:
    """Whether the loop, its last reference dropped by the caller, is freed."""
    gc.collect()
    return loop() is None


def test_a_loops_clients_are_kept_off_the_loop_and_forgotten_when_it_shuts_down() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)
    seen: dict[str, Any] = {}

    async def use() -> None:
        loop = asyncio.get_running_loop()
        before = set(vars(loop))
        borrow_async(cache, "a")
        seen["added"] = set(vars(loop)) - before
        seen["kept"] = loop in _LOOPS

    asyncio.run(use())
    assert seen["added"] <= {"close"}  # the one attribute set: see the test of a loop closed by hand
    assert seen["kept"]
    assert len(_LOOPS) == 0  # the entry went with the loop's shutdown
    assert made[0].closed


@pytest.mark.parametrize("loop_class", [asyncio.SelectorEventLoop, SealedLoop])
def test_a_loop_shut_down_by_hand_closes_its_clients_and_is_freed(loop_class: type[asyncio.AbstractEventLoop]) -> None:
    """What asyncio.run() does, step by step: on a loop that takes no attribute as on any other."""
    made: list[AsyncClient] = []
    cache = make_cache(made)
    loop = loop_class()
    borrow_on(loop, cache)
    assert not made[0].closed
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert made[0].closed and loop not in _LOOPS
    loop.close()
    gone = weakref.ref(loop)
    del loop
    assert freed(gone)


def test_a_loop_closed_by_hand_closes_the_clients_of_every_cache_first() -> None:
    """``new_event_loop()``, ``run_until_complete()``, ``close()``: no async generator is shut
    down, and the loop's ``close`` closes the clients of each cache used on it."""
    made: list[AsyncClient] = []
    first, second = make_cache(made), make_cache(made)
    loop = asyncio.new_event_loop()
    borrow_on(loop, first, second)
    assert len(made) == 2 and not any(client.closed for client in made)
    loop.close()
    assert all(client.closed for client in made)
    assert loop not in _LOOPS
    gone = weakref.ref(loop)
    del loop
    assert freed(gone)


def test_a_loop_that_refuses_attributes_closed_by_hand_loses_only_the_closing() -> None:
    """A loop that takes no ``close`` of chatplug's, closed without shutting down: its clients are
    not closed (nothing can run them any more), and its entry is dropped when the next loop makes
    clients, or at ``close()``: the loop is freed all the same."""
    made: list[AsyncClient] = []
    cache = make_cache(made)
    for forget in ("next loop", "close"):
        loop = SealedLoop()
        borrow_on(loop, cache)
        loop.close()
        assert "close" not in vars(loop)
        assert loop in _LOOPS and not made[-1].closed  # dropped, not closed: left to be collected
        if forget == "next loop":

            async def use() -> None:
                borrow_async(cache, "a")

            asyncio.run(use())
        else:
            cache.close()
        assert loop not in _LOOPS
        gone = weakref.ref(loop)
        del loop
        assert freed(gone)
    assert len(_LOOPS) == 0


def test_a_loop_with_a_close_of_its_own_keeps_it() -> None:
    """A ``close`` someone else put on the loop object is neither wrapped nor replaced: that
    loop's clients are closed at its shutdown, as on a loop that takes no attribute."""
    made: list[AsyncClient] = []
    cache = make_cache(made)
    loop = asyncio.new_event_loop()
    calls: list[str] = []
    own = weakref.ref(loop)

    def close() -> None:
        calls.append("close")
        asyncio.SelectorEventLoop.close(own())  # type: ignore[arg-type]

    loop.close = close  # type: ignore[method-assign]
    borrow_on(loop, cache)
    assert loop.close is close
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    assert calls == ["close"] and made[0].closed and loop not in _LOOPS
    del close, loop
    assert freed(own)
