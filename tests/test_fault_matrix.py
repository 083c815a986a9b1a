"""Every fault a provider can commit, against every HTTP backend, sync and async: each call comes
back (never raises) as a failed response of the right ``error_kind``, with an error of bounded
size, within its deadline plus a small slack. Real SDKs over sockets against the fake server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse

from .fakeserver import Reply
from .test_deadline import BACKENDS, JSON, SLACK, Site, google_error, open_site

TIMEOUT = 1.0  # each call's deadline (LLM_TIMEOUT's meaning): small, so the matrix stays fast
ERROR_LIMIT = 10_000  # characters: an error says what happened, it does not carry the body

E = ErrorKind


def error_body(site: Site, status: int, kind: str, message: str, retry_delay: str | None = None) -> bytes:
    """An error body in the backend's own shape (Gemini's: Google's, with a ``RetryInfo`` detail
    when ``retry_delay`` is given; the others say how long to wait in a header, if at all)."""
    if site.backend == "gemini":
        return google_error(status, message, retry_delay)
    if site.backend == "ollama":
        return json.dumps({"error": message}).encode()
    if site.backend == "openai":
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def status(code: int, kind: str, retry_after: int | None = None) -> Callable[[Site], Reply]:
    """An error reply with HTTP status ``code``; ``retry_after``: the seconds it asks to be retried
    in, said where the provider says it (Gemini in its body's ``RetryInfo``, the others in a
    ``retry-after`` header)."""

    def reply(site: Site) -> Reply:
        message = f"HTTP {code} from the fake"
        if retry_after is None:
            return Reply(code, error_body(site, code, kind, message), dict(JSON))
        if site.backend == "gemini":
            return Reply(code, error_body(site, code, kind, message, f"{retry_after}s"), dict(JSON))
        return Reply(code, error_body(site, code, kind, message), {**JSON, "retry-after": str(retry_after)})

    return reply


HTML = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = b"<html><body>" + b"Internal error. " * (5 * 1024 * 1024 // 16) + b"</body></html>"


@dataclass(frozen=True)
class Fault:
    """A fault: the reply the fake server makes (``None``: no server listens), and the kind a
    call meets it with."""

    reply: Callable[[Site], Reply] | None
    kind: ErrorKind
    backends: tuple[str, ...] = BACKENDS


FAULTS: dict[str, Fault] = {
    "refused": Fault(None, E.CONNECTION),
    "hang": Fault(lambda site: Reply(hang=True), E.TIMEOUT),
    "drip": Fault(lambda site: Reply(200, site.success, dict(JSON), drip=0.25), E.TIMEOUT),
    "reset mid-body": Fault(
        lambda site: Reply(200, pieces=[site.success[:40]], headers=dict(JSON), reset=True), E.CONNECTION
    ),
    "truncated body": Fault(lambda site: Reply(200, site.success, dict(JSON), truncate=40), E.CONNECTION),
    "400": Fault(status(400, "invalid_request_error"), E.BAD_REQUEST),
    "401": Fault(status(401, "authentication_error"), E.AUTH),
    "404": Fault(status(404, "not_found_error"), E.NOT_FOUND),
    "429": Fault(status(429, "rate_limit_error"), E.RATE_LIMIT),
    "429 retry-after": Fault(status(429, "rate_limit_error", retry_after=30), E.RATE_LIMIT),
    "500": Fault(status(500, "api_error"), E.SERVER),
    "503": Fault(status(503, "overloaded_error"), E.OVERLOADED),
    "529": Fault(status(529, "overloaded_error"), E.OVERLOADED, ("anthropic",)),
    "malformed JSON": Fault(lambda site: Reply(200, b'{"model": "m", "choices": [', dict(JSON)), E.SERVER),
    "HTML error page": Fault(lambda site: Reply(502, HTML, {"Content-Type": "text/html"}), E.SERVER),
    "JSON 100k deep": Fault(lambda site: Reply(200, DEEP, dict(JSON)), E.SERVER),
    "redirect loop": Fault(lambda site: Reply(307, b"", {"Location": site.endpoint}), E.SERVER),
    "5 MB error body": Fault(lambda site: Reply(500, HUGE, {"Content-Type": "text/html"}), E.SERVER),
}

#: Cells where a backend still gets the kind wrong, each with what it does instead: they fail until
#: fixed, and then say so (strict).
KNOWN: dict[tuple[str, str], str] = {}

CASES = [
    pytest.param(
        backend,
        name,
        id=f"{backend}-{name.replace(' ', '_')}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN[backend, name])] if (backend, name) in KNOWN else [],
    )
    for name, fault in FAULTS.items()
    for backend in fault.backends
]


@pytest.fixture
def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def both(backend: str) -> Iterator[tuple[str, LLMResponse, float]]:
    """The same call, sync then async, each with the seconds it took (it must not raise)."""
    for mode in ("sync", "async"):
        start = time.monotonic()
        if mode == "sync":
            response = chatplug.generate_completion_sync("hi", backend=backend, timeout=TIMEOUT)
        else:
            response = asyncio.run(chatplug.generate_completion_async("hi", backend=backend, timeout=TIMEOUT))
        yield mode, response, time.monotonic() - start


@pytest.mark.parametrize(("backend", "fault"), CASES)
def test_fault(backend: str, fault: str, closed_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for site in open_site(backend, monkeypatch):
        check(site, fault, closed_url, monkeypatch)


def check(site: Site, fault: str, closed_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = site.backend
    expected = FAULTS[fault]
    if expected.reply is None:  # nothing listens at the address
        for env in ("OLLAMA_HOST", "ANTHROPIC_BASE_URL"):
            monkeypatch.setenv(env, closed_url)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{closed_url}/v1")
        monkeypatch.setenv("GEMINI_BASE_URL", closed_url)
    else:
        site.route(expected.reply(site))
    for mode, response, elapsed in both(backend):
        said = f"{backend} {mode} {fault}: {response.error}"
        assert not response.success, said
        assert response.error is not None and len(response.error) < ERROR_LIMIT, said[:300]
        assert elapsed < TIMEOUT + SLACK, f"{said} took {elapsed:.2f} s"
        if fault == "429 retry-after":
            assert response.retry_after == 30, said
        assert response.error_kind is expected.kind, said  # last: a KNOWN cell fails only here
