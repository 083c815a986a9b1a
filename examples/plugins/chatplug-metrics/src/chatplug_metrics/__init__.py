"""chatplug-metrics: counts every chatplug call through the observability hooks.

``on_request`` runs just before a backend is called, ``on_response`` just before the caller
gets the response, successful or not. Both run on the caller's thread (or event loop), so
keep them quick and never let them block; whatever they raise is logged and ignored by chatplug.

Read the numbers with ``snapshot()``; start again with ``reset()``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from chatplug import ChatRequest, LLMResponse, hookimpl

__version__ = "0.1.0"

#: The key for calls that failed before a backend was chosen (bad input, unknown backend).
NO_BACKEND = "-"


@dataclass
class BackendMetrics:
    requests: int = 0  # requests handed to the backend (on_request)
    responses: int = 0  # responses returned to callers (on_response), failures included
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # error_kind -> count
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_total_s: float = 0.0
    latency_max_s: float = 0.0


# Hooks run on many threads at once: every update holds the lock.
_lock = threading.Lock()
_metrics: dict[str, BackendMetrics] = {}


def _for(backend: str | None) -> BackendMetrics:
    return _metrics.setdefault(backend or NO_BACKEND, BackendMetrics())


@hookimpl
def on_request(request: ChatRequest) -> None:
    with _lock:
        _for(request.backend).requests += 1


@hookimpl
def on_response(request: ChatRequest | None, response: LLMResponse) -> None:
    with _lock:
        m = _for(response.backend)
        m.responses += 1
        if response.success:
            m.successes += 1
        else:
            kind = str(response.error_kind or "unknown")
            m.failures[kind] = m.failures.get(kind, 0) + 1
        m.prompt_tokens += response.prompt_tokens
        m.completion_tokens += response.completion_tokens
        m.latency_total_s += response.response_time
        m.latency_max_s = max(m.latency_max_s, response.response_time)


def snapshot() -> dict[str, dict[str, Any]]:
    """The counts so far, per backend name, as plain data (a copy: safe to keep or serialise)."""
    with _lock:
        return {name: asdict(m) for name, m in sorted(_metrics.items())}


def reset() -> None:
    """Forget every count."""
    with _lock:
        _metrics.clear()
