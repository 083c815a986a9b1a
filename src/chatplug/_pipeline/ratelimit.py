"""Client-side rate limits: requests and tokens per minute per backend (``LLM_RATE_LIMIT``),
asked before each attempt, so that a process (or, through Redis, every process on every
machine) stays under a provider's quota instead of running into its 429s.

Each backend has a log of the requests let through in the last minute (a sliding window): when,
and how many tokens each was estimated at (prompt characters / 4 + ``max_tokens``, corrected
with the real usage once the reply says). A request waits until the window has room for one more
request and its tokens; it takes its place in the log at once (at the time it will be sent), so
that those asking after it queue behind it, first come first served. The pipeline waits
(``time.sleep`` / ``asyncio.sleep``) within the call's deadline; a wait past it fails the call at
once with ``rate_limit`` and ``retry_after``.

The log is in this process (thread- and async-safe) unless a Redis is configured
(``LLM_RATE_LIMIT_REDIS``, else ``LLM_CACHE`` when it is a ``redis://`` URL): then it is a sorted
set in Redis, checked and updated by one Lua script (atomic, on the Redis server's clock), shared
by every process that uses that Redis. A Redis that fails falls back on the local log, with one
warning.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from .._core.exceptions import RateLimitError
from .._core.values import ChatRequest, text_of

logger = logging.getLogger("chatplug")

#: The window of every limit, in seconds: the limits are per minute.
WINDOW = 60.0

#: Redis keys: this prefix and the backend's name.
REDIS_PREFIX = "chatplug:rate:"

#: Seconds a Redis that failed is left alone (the local log is used meanwhile).
RETRY_SECONDS = 5.0

Table = tuple[tuple[str, "float | None", "float | None"], ...]

#: The clock of the local logs; tests replace it (and ``sleep``/``asleep`` with it).
clock: Callable[[], float] = time.monotonic


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def asleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def limits_for(table: Table, backend: str) -> tuple[float | None, float | None] | None:
    """The (rpm, tpm) of ``backend`` in ``table``: its own entry, else ``*``'s, else ``None``."""
    default = None
    for name, rpm, tpm in table:
        if name == backend:
            return rpm, tpm
        if name == "*":
            default = rpm, tpm
    return default


def estimate(request: ChatRequest) -> int:
    """The tokens a request is counted at until its reply says: prompt characters / 4 + max_tokens."""
    return sum(len(text_of(message)) for message in request.messages) // 4 + request.max_tokens


# -- the local log ---------------------------------------------------------------------------


class _Log:
    """One backend's requests in the window: ``[time, tokens, alive]`` entries, oldest first."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[list[Any]] = deque()
        self.total = 0  # the tokens of the entries

    def prune(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - WINDOW:
            entry = entries.popleft()
            entry[2] = False
            self.total -= entry[1]

    def earliest(self, now: float, rpm: float | None, tpm: float | None, tokens: int) -> float:
        """When a request of ``tokens`` fits: at ``now`` or later, never before the last one."""
        entries = self.entries
        start = max(now, entries[-1][0]) if entries else now
        count, total, i = len(entries), self.total, 0
        while i < len(entries) and (
            entries[i][0] <= start - WINDOW
            or (rpm is not None and count + 1 > rpm)
            or (tpm is not None and total + tokens > tpm)
        ):
            start = max(start, entries[i][0] + WINDOW)
            count, total, i = count - 1, total - entries[i][1], i + 1
        return start


class Ticket:
    """A request's place in a log: its estimate is replaced by the real usage with ``settle``."""

    __slots__ = ("backend", "entry", "id", "limiter", "tokens")

    def __init__(self, limiter: Any, backend: str, tokens: int, entry: list[Any] | None = None, id: str = "") -> None:
        self.limiter, self.backend, self.tokens, self.entry, self.id = limiter, backend, tokens, entry, id

    def settle(self, tokens: int) -> None:
        if tokens != self.tokens:
            self.limiter.settle(self, tokens)

    async def asettle(self, tokens: int) -> None:
        if tokens != self.tokens:
            await self.limiter.asettle(self, tokens)


class LocalLimiter:
    """The logs of this process, one per backend, under one lock (no await inside it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, _Log] = {}

    def acquire(
        self, backend: str, rpm: float | None, tpm: float | None, tokens: int, max_wait: float
    ) -> tuple[float, Ticket | None]:
        """(seconds to wait, the request's place): the place is taken only if the wait is at most
        ``max_wait`` (else the ticket is ``None``)."""
        if tpm is not None:
            tokens = min(tokens, int(tpm))  # more than a minute's worth waits for an empty window
        with self._lock:
            log = self._logs.get(backend)
            if log is None:
                log = self._logs[backend] = _Log()
            now = clock()
            log.prune(now)
            at = log.earliest(now, rpm, tpm, tokens)
            wait = at - now
            if wait > max_wait:
                return wait, None
            entry = [at, tokens, True]
            log.entries.append(entry)
            log.total += tokens
        return wait, Ticket(self, backend, tokens, entry)

    async def aacquire(
        self, backend: str, rpm: float | None, tpm: float | None, tokens: int, max_wait: float
    ) -> tuple[float, Ticket | None]:
        return self.acquire(backend, rpm, tpm, tokens, max_wait)

    def settle(self, ticket: Ticket, tokens: int) -> None:
        with self._lock:
            entry = ticket.entry
            if entry is not None and entry[2]:
                self._logs[ticket.backend].total += tokens - entry[1]
                entry[1] = tokens
            ticket.tokens = tokens

    async def asettle(self, ticket: Ticket, tokens: int) -> None:
        self.settle(ticket, tokens)

    def reset(self) -> None:
        with self._lock:
            self._logs.clear()


# -- the shared log, in Redis ------------------------------------------------------------------

# KEYS[1]: the backend's log, a sorted set of "id:tokens" scored by the time (ms) each is sent.
# ARGV: rpm, tpm (0: none), tokens, max wait (ms), id, window (ms). Returns {taken (0/1), wait (ms)}.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local e = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local count, total = #e / 2, 0
local tokens = {}
for i = 1, #e, 2 do
  tokens[i] = tonumber(string.match(e[i], ':(%d+)$')) or 0
  total = total + tokens[i]
end
local start = now
if #e > 0 then start = math.max(now, tonumber(e[#e])) end
local i = 1
while i < #e and (tonumber(e[i + 1]) <= start - window or (rpm > 0 and count + 1 > rpm)
                  or (tpm > 0 and total + n > tpm)) do
  start = math.max(start, tonumber(e[i + 1]) + window)
  count, total, i = count - 1, total - tokens[i], i + 2
end
local wait = start - now
if wait > tonumber(ARGV[4]) then return {0, wait} end
redis.call('ZADD', KEYS[1], start, ARGV[5] .. ':' .. n)
redis.call('PEXPIRE', KEYS[1], wait + window + 1000)
return {1, wait}
"""

# KEYS[1]: the log; ARGV: id, the tokens it was counted at, the real tokens.
SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
if score then
  redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2])
  redis.call('ZADD', KEYS[1], score, ARGV[1] .. ':' .. ARGV[3])
end
return 0
"""


class RedisLimiter:
    """The logs in a Redis, shared by every process using it; the local ones when it fails."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._down_until = 0.0

    def _clients(self) -> Any:
        from .cache import redis_clients

        return redis_clients(self.url)

    def _args(self, rpm: float | None, tpm: float | None, tokens: int, max_wait: float) -> list[Any]:
        return [rpm or 0, tpm or 0, tokens, int(max_wait * 1000), uuid.uuid4().hex, int(WINDOW * 1000)]

    def _up(self) -> bool:
        return not self._down_until or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        from .._http.secrets import redact

        if not self._down_until:
            logger.warning(
                redact(
                    f"rate limit Redis {self.url} failed, the limits are this process's own meanwhile: "
                    f"{type(exc).__name__}: {exc}"
                )
            )
        self._down_until = time.monotonic() + RETRY_SECONDS

    def _taken(self, reply: Any, backend: str, tokens: int, args: list[Any]) -> tuple[float, Ticket | None]:
        self._down_until = 0.0
        taken, wait = int(reply[0]), int(reply[1]) / 1000
        return wait, (Ticket(self, backend, tokens, id=args[4]) if taken else None)

    def acquire(
        self, backend: str, rpm: float | None, tpm: float | None, tokens: int, max_wait: float
    ) -> tuple[float, Ticket | None]:
        if tpm is not None:
            tokens = min(tokens, int(tpm))
        if self._up():
            args = self._args(rpm, tpm, tokens, max_wait)
            try:
                with self._clients().sync(self.url) as client:
                    reply = client.register_script(ACQUIRE)(keys=[REDIS_PREFIX + backend], args=args)
                return self._taken(reply, backend, tokens, args)
            except Exception as exc:
                self._failed(exc)
        return local.acquire(backend, rpm, tpm, tokens, max_wait)

    async def aacquire(
        self, backend: str, rpm: float | None, tpm: float | None, tokens: int, max_wait: float
    ) -> tuple[float, Ticket | None]:
        if tpm is not None:
            tokens = min(tokens, int(tpm))
        if self._up():
            args = self._args(rpm, tpm, tokens, max_wait)
            try:
                from .cache import _redis

                if self.url not in _redis:  # the first use imports redis (~0.2 s): off the event loop
                    import asyncio

                    await asyncio.to_thread(self._clients)
                with self._clients().async_(self.url) as client:
                    reply = await client.register_script(ACQUIRE)(keys=[REDIS_PREFIX + backend], args=args)
                return self._taken(reply, backend, tokens, args)
            except Exception as exc:
                self._failed(exc)
        return local.acquire(backend, rpm, tpm, tokens, max_wait)

    def settle(self, ticket: Ticket, tokens: int) -> None:
        try:
            with self._clients().sync(self.url) as client:
                client.register_script(SETTLE)(
                    keys=[REDIS_PREFIX + ticket.backend], args=[ticket.id, ticket.tokens, tokens]
                )
            ticket.tokens = tokens
        except Exception as exc:
            self._failed(exc)

    async def asettle(self, ticket: Ticket, tokens: int) -> None:
        try:
            with self._clients().async_(self.url) as client:
                await client.register_script(SETTLE)(
                    keys=[REDIS_PREFIX + ticket.backend], args=[ticket.id, ticket.tokens, tokens]
                )
            ticket.tokens = tokens
        except Exception as exc:
            self._failed(exc)


local = LocalLimiter()
_lock = threading.Lock()
_shared: dict[str, RedisLimiter] = {}


def limiter() -> LocalLimiter | RedisLimiter:
    """The limiter the configuration asks for: shared through Redis, or this process's own."""
    from .._core.settings import settings

    url = settings.rate_limit_redis
    if url is None:
        cache = settings.cache
        if cache is not None and cache.lower().startswith(("redis://", "rediss://", "unix://")):
            url = cache
    if url is None:
        return local
    found = _shared.get(url)
    if found is None:
        with _lock:
            found = _shared.setdefault(url, RedisLimiter(url))
    return found


def too_long(backend: str, wait: float) -> RateLimitError:
    """The error of a call whose turn comes after its deadline."""
    return RateLimitError(
        f"the client-side rate limit (LLM_RATE_LIMIT) has room for this request in {wait:.1f} s, after the "
        "call's deadline: nothing was sent. Wait retry_after seconds, or raise LLM_TIMEOUT.",
        backend=backend,
        retry_after=wait,
    )


def reset() -> None:
    """Forget the local logs and the shared limiters (tests)."""
    local.reset()
    with _lock:
        _shared.clear()
