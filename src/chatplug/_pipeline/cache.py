"""The response cache: a successful reply kept under a key made of the whole request, so that
the same request asked again (by this process, another one on the machine, or any machine that
shares the Redis) is answered without sending anything.

``LLM_CACHE`` says where: a file path is a SQLite database (stdlib ``sqlite3``, WAL mode: safe
for many processes on one machine); a ``redis://`` (``rediss://``, ``unix://``) URL is a Redis
server (the ``redis`` client, ``pip install "chatplug[redis]"``, imported on first use), shared
by every process on every machine. ``LLM_CACHE_TTL`` bounds how long an entry is kept.

The key is the sha256 of the canonical JSON of everything that makes the reply: the backend,
where it sends the request (``ChatBackend.endpoint``: its base URL, never a credential), the
model, the messages, temperature, max_tokens, every option, the tools' schemas, tool_choice and
the response_format schema. Not the timeout, retries or fallbacks: they change whether a reply
comes, not which.

SQLite is blocking I/O that may wait for another process's lock (``BUSY_TIMEOUT``): async calls
do it in a worker thread, never on the event loop. Redis has an asyncio client of its own.

A cache that fails (a file that cannot be written, a Redis that is down) never fails a call:
one warning is logged, the call goes on uncached, and the store is left alone for
``RETRY_SECONDS`` before it is tried again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.checks import freeze, thaw
from .._core.values import ChatRequest, ChatResult, LLMResponse
from .._http.secrets import redact

if TYPE_CHECKING:
    import sqlite3

    from .._http.clients import ClientCache

logger = logging.getLogger("chatplug")

#: The wall clock entries expire on (shared by processes and machines); tests replace it.
clock: Callable[[], float] = time.time

#: Seconds a store that failed is left alone before it is tried again.
RETRY_SECONDS = 5.0

#: Seconds a Redis command (and a connection to Redis) may take before the cache gives up on it.
REDIS_TIMEOUT = 2.0

#: Redis keys: this prefix and the request's sha256.
REDIS_PREFIX = "chatplug:cache:"

#: The version of the stored record: a change makes old entries plain misses.
VERSION = 1

#: The version of the key: a change makes old entries plain misses. 2: the endpoint is in it.
KEY_VERSION = 2

#: Seconds a SQLite statement waits for another connection's lock before it fails.
BUSY_TIMEOUT = 10.0

#: Idle SQLite connections kept for reuse (as many as asyncio's default executor has threads at
#: most); more are opened while more threads use the store at once, and closed after.
IDLE_CONNECTIONS = 32

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis(place: str) -> bool:
    return place.lower().startswith(REDIS_SCHEMES)


def key(request: ChatRequest, endpoint: str = "") -> str:
    """The cache key of ``request``: sha256 of the canonical JSON of what makes its reply.
    ``endpoint`` is where it goes, as its backend says (``ChatBackend.endpoint``)."""
    response_format = request.response_format
    fields = [
        KEY_VERSION,
        request.backend,
        without_userinfo(endpoint),
        request.model,
        thaw(request.messages),
        request.temperature,
        request.max_tokens,
        thaw(request.options) if request.options else {},
        [[t.name, t.description, thaw(t.parameters), t.strict] for t in request.tools],
        request.tool_choice,
        None
        if response_format is None
        else [response_format.name, thaw(response_format.schema), response_format.strict],
    ]
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def without_userinfo(endpoint: str) -> str:
    """``endpoint`` without the ``user:password@`` of its address, if it is a URL: who asks does
    not change the reply, and no credential goes into a key. (Anything else, a file path, as it is.)"""
    start = endpoint.find("://")
    if start < 0:
        return endpoint
    start += 3
    ends = [i for i in (endpoint.find(mark, start) for mark in "/?#") if i >= 0]
    at = endpoint.rfind("@", start, min(ends, default=len(endpoint)))
    return endpoint if at < 0 else endpoint[:start] + endpoint[at + 1 :]


def record(response: LLMResponse) -> bytes:
    """What is stored of a successful ``response``: the reply, never the timing or attempts."""
    data = {
        "v": VERSION,
        "content": response.content,
        "model": response.model_used,
        "prompt_tokens": response.prompt_tokens if response.usage_reported else None,
        "completion_tokens": response.completion_tokens if response.usage_reported else None,
        "finish_reason": response.finish_reason,
        "reasoning": response.reasoning,
        "tool_calls": [call.to_dict() for call in response.tool_calls],
        "thinking_blocks": response.thinking_blocks,
        "citations": response.citations,
        "reasoning_tokens": response.reasoning_tokens,
    }
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def result(stored: bytes) -> ChatResult | None:
    """The ``ChatResult`` a stored record holds (``None`` for one chatplug cannot read)."""
    try:
        data = json.loads(stored)
        if data.get("v") != VERSION:
            return None
        if "thinking_blocks" not in data and data["reasoning"] and data["tool_calls"]:
            # Stored before thinking blocks were kept: Anthropic refuses the tool loop's next
            # request without them. A miss: asked again, and stored whole.
            return None
        calls: tuple[Any, ...] = ()
        if data["tool_calls"]:
            from .._core.tools import ToolCallDelta

            calls = tuple(
                ToolCallDelta(index=i, id=call["id"], name=call["name"], arguments=json.dumps(call["arguments"]))
                for i, call in enumerate(data["tool_calls"])
            )
        return ChatResult(
            content=data["content"],
            model=data["model"],
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            finish_reason=data["finish_reason"],
            reasoning=data["reasoning"],
            tool_calls=calls,
            thinking_blocks=tuple(freeze(block) for block in data.get("thinking_blocks", ())),
            citations=tuple(data.get("citations", ())),
            reasoning_tokens=data.get("reasoning_tokens"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# -- the stores ----------------------------------------------------------------------------


class Store:
    """Where entries are kept. ``get`` and ``put`` raise whatever their storage raises; ``Cache``
    turns that into a warning. The async twins run them in a worker thread, unless a store has
    an async client of its own."""

    def get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        raise NotImplementedError

    async def aget(self, key: str) -> bytes | None:
        import asyncio

        return await asyncio.to_thread(self.get, key)

    async def aput(self, key: str, value: bytes, ttl: float | None) -> None:
        import asyncio

        await asyncio.to_thread(self.put, key, value, ttl)

    def close(self) -> None:
        pass


class SQLiteStore(Store):
    """A SQLite file in WAL mode, so readers never wait for a writer. Each statement borrows a
    connection of its own from a pool (a sqlite3 connection is not for two threads at once): a
    write that waits for another process's lock holds up no lookup of this process's other
    threads. Async calls run the same methods in a worker thread (``Store.aget``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()  # guards the pool
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: a connection goes back to the pool and serves another thread
        # next, never two at once.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL)"
            )
        except BaseException:
            connection.close()
            raise
        return connection

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """An idle connection (a new one if none), back to the pool after a success; closed
        after a failure, or once the store is closed."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._connect()
        kept = False
        try:
            yield connection
            with self._lock:
                if not self._closed and len(self._idle) < IDLE_CONNECTIONS:
                    self._idle.append(connection)
                    kept = True
        finally:
            if not kept:
                connection.close()

    def get(self, key: str) -> bytes | None:
        with self._connection() as connection:
            row = connection.execute("SELECT value, expires FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= clock()):
            return None
        return bytes(row[0])

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else clock() + ttl
        with self._connection() as connection:
            connection.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)", (key, value, expires))
            if expires is not None and os.urandom(1)[0] < 3:  # now and then: drop what expired
                connection.execute("DELETE FROM responses WHERE expires <= ?", (clock(),))

    def close(self) -> None:
        """Close the idle connections; those in use close when their statement is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class RedisStore(Store):
    """A Redis server: ``SET key value PX ttl``; async calls use redis' asyncio client, one per
    event loop (closed with it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: ClientCache[Any, Any] = redis_clients(url)

    def get(self, key: str) -> bytes | None:
        with self._clients.sync(self.url) as client:
            value: bytes | None = client.get(REDIS_PREFIX + key)
        return value

    def put(self, key: str, value: bytes, ttl: float | None) -> None:
        with self._clients.sync(self.url) as client:
            client.set(REDIS_PREFIX + key, value, px=None if ttl is None else max(1, round(ttl * 1000)))

    async def aget(self, key: str) -> bytes | None:
        with self._clients.async_(self.url) as client:
            value: bytes | None = await client.get(REDIS_PREFIX + key)
        return value

    async def aput(self, key: str, value: bytes, ttl: float | None) -> None:
        with self._clients.async_(self.url) as client:
            await client.set(REDIS_PREFIX + key, value, px=None if ttl is None else max(1, round(ttl * 1000)))

    def close(self) -> None:
        self._clients.close()


_redis_lock = threading.Lock()
_redis: dict[str, ClientCache[Any, Any]] = {}


def redis_clients(url: str) -> ClientCache[Any, Any]:
    """The Redis clients for ``url`` (sync ones shared by threads, async ones per event loop),
    shared by the cache and the rate limiter. ``ImportError`` without the ``redis`` package."""
    with _redis_lock:
        clients = _redis.get(url)
        if clients is None:
            import redis
            import redis.asyncio

            from .._http.clients import ClientCache

            wait = REDIS_TIMEOUT
            clients = ClientCache(
                lambda: redis.Redis.from_url(url, socket_timeout=wait, socket_connect_timeout=wait),
                lambda: redis.asyncio.Redis.from_url(url, socket_timeout=wait, socket_connect_timeout=wait),
                close_async=lambda client: client.aclose(),
            )
            _redis[url] = clients
        return clients


# -- the cache of a call -------------------------------------------------------------------


class Cache:
    """One configured store, as the pipeline uses it: failures become one warning, and the
    store is skipped for ``RETRY_SECONDS`` after one."""

    def __init__(self, place: str) -> None:
        self.place = place
        self.kind = "Redis" if is_redis(place) else "SQLite"
        self._store: Store | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _usable(self) -> Store | None:
        if self._down_until and time.monotonic() < self._down_until:
            return None
        if self._store is None:
            with self._lock:
                if self._store is None:
                    try:
                        self._store = RedisStore(self.place) if self.kind == "Redis" else SQLiteStore(self.place)
                    except ImportError:
                        self._failed('the redis package is not installed: pip install "chatplug[redis]"')
                        return None
        return self._store

    def _failed(self, problem: object) -> None:
        if not self._down_until:
            logger.warning(redact(f"response cache {self.place} ({self.kind}) failed, calls go on uncached: {problem}"))
        self._down_until = time.monotonic() + RETRY_SECONDS

    def _ok(self) -> None:
        if self._down_until:
            logger.info("response cache %s (%s) works again", redact(self.place), self.kind)
            self._down_until = 0.0

    def get(self, key: str) -> ChatResult | None:
        store = self._usable()
        if store is None:
            return None
        try:
            stored = store.get(key)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        self._ok()
        return None if stored is None else result(stored)

    async def _ausable(self) -> Store | None:
        if self._store is None:  # the first use imports redis (~0.2 s): off the event loop
            import asyncio

            return await asyncio.to_thread(self._usable)
        return self._usable()

    async def aget(self, key: str) -> ChatResult | None:
        store = await self._ausable()
        if store is None:
            return None
        try:
            stored = await store.aget(key)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        self._ok()
        return None if stored is None else result(stored)

    def put(self, key: str, response: LLMResponse, ttl: float | None) -> None:
        store = self._usable()
        if store is None:
            return
        try:
            store.put(key, record(response), ttl)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        else:
            self._ok()

    async def aput(self, key: str, response: LLMResponse, ttl: float | None) -> None:
        store = await self._ausable()
        if store is None:
            return
        try:
            await store.aput(key, record(response), ttl)
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        else:
            self._ok()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        self._down_until = 0.0


_lock = threading.Lock()
_caches: dict[str, Cache] = {}


def cache_for(place: str) -> Cache:
    """The ``Cache`` of ``LLM_CACHE=place``, made on first use and kept."""
    found = _caches.get(place)
    if found is None:
        with _lock:
            found = _caches.setdefault(place, Cache(place))
    return found


def close() -> None:
    """Close every cache's connections and Redis clients (they reopen on the next call)."""
    with _lock:
        caches = list(_caches.values())
        _caches.clear()
    for cache in caches:
        cache.close()
    with _redis_lock:
        clients = list(_redis.values())
        _redis.clear()
    for client in clients:
        client.close()
