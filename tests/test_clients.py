"""The toolkit's client cache: one client per configuration, async ones per event loop and closed
with it, a rotated credential replacing its client without failing the requests still using it."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

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
