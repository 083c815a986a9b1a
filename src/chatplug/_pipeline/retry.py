"""One retry and fallback policy for every backend and every plugin, in the pipeline.

A call has a deadline (``LLM_TIMEOUT`` or ``timeout=``) that bounds all of it: every attempt,
every backoff wait, every ``Retry-After``. A failed attempt of a transient kind (connection,
timeout, rate limit, overloaded, server) is retried with exponential backoff and jitter, or after
the ``Retry-After`` the provider asked for when that fits in the deadline; when it does not, the
call fails at once with ``retry_after`` set. Once a target's retries are spent (or at once, for a
kind the caller opted into, e.g. ``not_found``), the next fallback target is tried, within the
same deadline. A target that keeps failing is skipped for a while (a cooldown, as LiteLLM's
router does), as long as another target is left to try.

``Plan`` decides; the attempt loop (``attempts``, whole and streamed calls alike) only waits
(``time.sleep`` / ``asyncio.sleep``) and runs the attempts it hands it.
"""

from __future__ import annotations

import threading
import time

from .._core.exceptions import APITimeoutError, ChatplugError, ErrorKind

#: Failures worth another attempt: the same request may well succeed a moment later.
TRANSIENT = frozenset(
    {ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.RATE_LIMIT, ErrorKind.OVERLOADED, ErrorKind.SERVER}
)
#: Failures a caller may opt into falling back on (``fallback_on=``): another target may have the
#: model, or a key that works.
OPT_IN = frozenset({ErrorKind.NOT_FOUND, ErrorKind.AUTH})

BACKOFF_BASE, BACKOFF_CAP = 0.5, 8.0  # seconds: 0.5, 1, 2, 4, 8, 8 ... each with jitter
COOLDOWN_AFTER, COOLDOWN_SECONDS = 3, 30.0  # consecutive failures, then skipped this long


class Target(tuple[str, "str | None"]):
    """Where an attempt goes: a backend, and a model (``None``: the backend's default)."""

    __slots__ = ()

    def __new__(cls, backend: str, model: str | None) -> Target:
        return tuple.__new__(cls, (backend, model))

    @property
    def backend(self) -> str:
        return self[0]

    @property
    def model(self) -> str | None:
        return self[1]

    def __str__(self) -> str:
        return f"{self.backend}:{self.model}" if self.model else self.backend


def backoff(retry: int) -> float:
    """Seconds before retry number ``retry`` (0 first): exponential, capped, with jitter so that
    many clients failing together do not come back together."""
    import random  # here: only failed attempts pay for it

    return float(min(BACKOFF_BASE * 2.0**retry, BACKOFF_CAP)) * (0.5 + random.random() / 2)


class Plan:
    """The attempts of one call."""

    __slots__ = (
        "attempts", "deadline", "errors", "fallback_on", "index", "max_retries", "retries", "target", "targets",
        "timeout",
    )  # fmt: skip

    def __init__(
        self,
        targets: list[Target],
        max_retries: int,
        timeout: float,
        fallback_on: frozenset[ErrorKind] = frozenset(),
    ) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.max_retries = max_retries
        self.fallback_on = TRANSIENT | fallback_on if fallback_on else TRANSIENT
        # A target cooling down is skipped while another is left to try.
        self.targets = [t for t in targets if not _cooling(t)] or [targets[0]]
        self.index = 0
        #: Where the next attempt goes: ``targets[index]``.
        self.target: Target = self.targets[0]
        self.retries = 0  # of the current target
        self.attempts = 0
        self.errors: list[ChatplugError] = []

    def restart(self) -> None:
        """Start the deadline's clock again: the first attempt waited for its backend to load (an
        SDK import that nothing can interrupt), which is no time the server took."""
        self.deadline = time.monotonic() + self.timeout

    def remaining(self) -> float:
        """Seconds left before the deadline; ``APITimeoutError`` when none are."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise APITimeoutError(
                f"no answer within the call's deadline of {self.timeout:g} s ({self.attempts} attempts). Raise "
                "LLM_TIMEOUT or pass timeout=, or lower max_tokens."
            )
        return left

    def succeeded(self) -> None:
        _record(self.target, failed=False)

    def failed(self, error: ChatplugError) -> float | None:
        """Record a failed attempt: the seconds to wait before the next one, or ``None`` to give
        up (``error`` is then the call's)."""
        self.errors.append(error)
        _record(self.target, failed=error.kind in self.fallback_on)
        if error.kind in TRANSIENT and self.retries < self.max_retries:
            wait = error.retry_after if error.retry_after is not None else backoff(self.retries)
            if time.monotonic() + wait < self.deadline:
                self.retries += 1
                return wait
        if error.kind in self.fallback_on and self.index + 1 < len(self.targets):
            self.index += 1
            self.target = self.targets[self.index]
            self.retries = 0
            return 0.0
        return None

    def report(self, error: ChatplugError) -> ChatplugError:
        """``error``, saying how many attempts were made when there were more than one."""
        if self.attempts > 1 and "attempts" not in error.message:
            targets = len({str(e.backend) for e in self.errors})
            over = f" over {targets} targets" if targets > 1 else ""
            error.message = f"{error.message} ({self.attempts} attempts{over})"
        return error

    def earlier_errors(self, succeeded: bool) -> list[str]:
        """The errors of the failed attempts but the call's own (the last, when it failed), as
        ``backend: message``."""
        if not self.errors:
            return []
        return [str(error) for error in (self.errors if succeeded else self.errors[:-1])]


# -- cooldown: shared by every call in the process ---------------------------------------

_lock = threading.Lock()
_failures: dict[Target, int] = {}
_cooled_until: dict[Target, float] = {}


def _record(target: Target, *, failed: bool) -> None:
    if not failed and target not in _failures and target not in _cooled_until:
        return  # the common case, and nothing to forget: no lock for it
    with _lock:
        if not failed:
            _failures.pop(target, None)
            _cooled_until.pop(target, None)
            return
        count = _failures.get(target, 0) + 1
        _failures[target] = count
        if count >= COOLDOWN_AFTER:
            _cooled_until[target] = time.monotonic() + COOLDOWN_SECONDS
            _failures[target] = 0


def _cooling(target: Target) -> bool:
    until = _cooled_until.get(target)
    return until is not None and time.monotonic() < until


def reset_cooldowns() -> None:
    """Forget every target's failures (``chatplug.close()`` does, and tests)."""
    with _lock:
        _failures.clear()
        _cooled_until.clear()
