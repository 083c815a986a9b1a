"""The client cache: one client per configuration, async ones per event loop and closed with it."""

from __future__ import annotations

import asyncio
import threading

from chatplug._clients import ClientCache


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


def test_async_clients_are_reused_on_a_loop_and_closed_when_it_shuts_down() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)

    async def use() -> None:
        assert cache.async_("a") is cache.async_("a")
        assert cache.async_("b") is not cache.async_("a")
        assert not any(client.closed for client in made[-2:])  # open while their loop runs

    asyncio.run(use())
    asyncio.run(use())  # a new loop gets new clients
    assert len(made) == 4
    assert all(client.closed for client in made)


def test_sync_clients_are_shared_by_threads() -> None:
    cache = make_cache([])
    seen: list[SyncClient] = []
    threads = [threading.Thread(target=lambda: seen.append(cache.sync("k"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1
    assert cache.clear() == [seen[0]]
    assert cache.sync("k") is not seen[0]


def test_a_new_credential_replaces_the_client_and_closes_the_old_one() -> None:
    made: list[AsyncClient] = []
    cache = make_cache(made)
    first = cache.sync("k", credential="key-1")
    assert cache.sync("k", credential="key-1") is first
    second = cache.sync("k", credential="key-2")
    assert second is not first
    assert first.closed and not second.closed
    assert len(cache) == 1

    async def rotate() -> None:
        old = cache.async_("k", credential="key-1")
        new = cache.async_("k", credential="key-2")
        assert new is not old and not new.closed
        await asyncio.sleep(0)  # one step of the loop: the old client's close, scheduled on it, runs
        assert old.closed and not new.closed

    asyncio.run(rotate())
    assert len(made) == 2 and all(client.closed for client in made)  # the new one at loop shutdown
