"""``chatplug.toolkit``: what every backend needs, public and stable. chatplug's own backends
(ollama, openai, anthropic, local) are built on exactly this and nothing private, so a plugin
built on it is as good as a built-in.

Clients
    ``ClientCache``: one SDK client per configuration (host, timeout ...), shared by threads;
    async clients one per event loop, closed when that loop shuts down; a rotated key makes a
    new client and the old one closes when its last request returns. Borrow one per request::

        with self.clients.sync((url, request.timeout), url, request.timeout, credential=key) as client:
            ...

    ``lean_cookies(client)``: an ``httpx.Client`` or ``AsyncClient`` whose cookie jar reads only
    the replies that set a cookie, as httpx2's does (~8% of a sync ollama call to a loopback server);
    the cookies are the same. ``lean_urls(client)``: deprecated, does nothing now (it changed the
    class of httpx's client, which a release of httpx could break) and returns ``client``; it
    will be removed.

Deadlines
    ``deadline_client(httpx_client)``: a sync ``httpx.Client`` (or ``httpx2.Client``, e.g. an SDK's
    ``DefaultHttpxClient``) whose every connect, read and write ends at the call's deadline,
    whatever the server does (per-read timeouts do not stop a server that drips one byte a
    second). The pipeline sets the deadline around each sync ``complete()``; a sync ``stream()``
    waits for its first chunk with ``first_within(chunks, request.deadline)`` (the rest is bounded
    per read by ``request.timeout``). ``deadline_transport(transport)`` wraps one transport;
    ``deadline_scope(deadline)`` sets the deadline for a block. Async calls need none of this: the
    pipeline cancels them at the deadline.

Async transport
    ``async_transport_options(http, verify=..., limits=..., trust_env=...)``: the keyword
    arguments that put an ``httpx.AsyncClient`` (``http=httpx``, the default) or an
    ``httpx2.AsyncClient`` (``http=httpx2``) on aiohttp -- several times the requests a second of
    httpx's own pool, at a fraction of the CPU -- as ``{"transport": ..., "mounts": ...}``, with
    TLS (``SSL_CERT_FILE`` ...) and proxies (``HTTP(S)_PROXY``, ``NO_PROXY``) from the environment
    as the client's own transport takes them; ``{}`` when ``LLM_ASYNC_TRANSPORT=default``
    (``settings.async_transport``), read each time. Pass them to the client, or to an SDK that
    passes its keyword arguments on (``ollama.AsyncClient(**options)``), or build the SDK's own
    client with them (``http_client=openai.DefaultAsyncHttpxClient(**options)``)::

        lambda host: ollama.AsyncClient(host=host, **async_transport_options())

    aiohttp's failures are raised as httpx's (a refused connection a ``ConnectError``, a cut-off
    reply a ``RemoteProtocolError`` ...), so they map as before; the aiohttp session closes with
    its client (``ClientCache`` closes clients at loop shutdown). ``aiohttp_transport(http, ...)``
    is one such transport; ``use_aiohttp()`` says whether the setting asks for aiohttp (aiohttp
    is imported on first use; without it installed, the default is the SDK's own transport).
    ``tls_context(http)``: the TLS context an ``http`` client makes for itself (``SSL_CERT_FILE``
    ...), made once and shared (~50 ms each): ``httpx2.Client(verify=tls_context(httpx2))``.

A dependency's internals
    ``private_attribute(owner, name, kind, what=...)``: an SDK's private attribute if it is there
    and a ``kind``, else ``None`` with one warning that ``what`` (a speed-up, an extra bound) is
    off; the caller then takes the public path. ``lost(what, why)`` is that warning (once per
    ``what``), for a check of the backend's own.

Errors
    ``status_error(status, body, where=..., headers=...)``: the chatplug exception for an HTTP
    error (the status table, the provider's message found in its body, ``Retry-After`` parsed,
    context-length detected). ``map_exceptions(where=..., timeout=...)``: a ``with`` block that
    turns the HTTP stack's exceptions (httpx, httpx2, aiohttp, sockets) into connection, timeout
    or config errors; ``transport_error`` is the same as a function. ``invalid_response`` for a
    reply that cannot be read.

Environment and secrets
    ``env_setting``, ``env_secret`` and ``env_url`` read a provider's variables: stripped,
    checked, a malformed one a ``ConfigError`` naming the variable (never a secret's value).
    Every secret read with ``env_secret`` (or given to ``register_secret``), and the password
    of an address read with ``env_url`` or ``env_setting``, is masked in every error, log line
    and ``repr`` chatplug produces, whichever backend raised it; so is any URL's password.

Requests
    ``supported_options(request, accepted)``: the options a provider takes, the rest left out
    with a debug log. ``thaw(value)``: plain dicts and lists from a request's read-only
    ``messages`` and ``options``. ``import_sdk(module, extra)``: an SDK imported on first use,
    or a ``ConfigError`` giving the ``pip install`` line.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._core.checks import freeze, thaw
from ._core.exceptions import ConfigError
from ._core.internals import lean_cookies, lost, private_attribute
from ._core.settings import env
from ._core.values import ChatRequest
from ._http.clients import ClientCache, Lease
from ._http.deadline import deadline_client, deadline_scope, deadline_transport, first_within
from ._http.errors import (
    CONTEXT_MARKERS,
    error_detail,
    invalid_response,
    map_exceptions,
    retry_after,
    status_class,
    status_error,
    transport_error,
)
from ._http.secrets import redact, register_secret
from ._http.transports import aiohttp_transport, async_transport_options, tls_context, use_aiohttp

__all__ = [
    "CONTEXT_MARKERS",
    "ClientCache",
    "Lease",
    "aiohttp_transport",
    "async_transport_options",
    "deadline_client",
    "deadline_scope",
    "deadline_transport",
    "env_secret",
    "env_setting",
    "env_url",
    "error_detail",
    "first_within",
    "freeze",
    "import_sdk",
    "invalid_response",
    "lean_cookies",
    "lean_urls",
    "lost",
    "map_exceptions",
    "private_attribute",
    "redact",
    "register_secret",
    "retry_after",
    "status_class",
    "status_error",
    "supported_options",
    "thaw",
    "tls_context",
    "transport_error",
    "use_aiohttp",
]

logger = logging.getLogger("chatplug")

C = TypeVar("C")


def lean_urls(client: C) -> C:
    """Deprecated, and does nothing: returns ``client`` as it is. It made an httpx client keep the
    request URLs it had parsed, by changing the client's class, which a release of httpx could
    break. It will be removed."""
    warnings.warn(
        "chatplug.toolkit.lean_urls does nothing now and will be removed: stop calling it.",
        DeprecationWarning,
        stacklevel=2,
    )
    return client


def env_setting(name: str) -> str | None:
    """Environment variable ``name`` stripped of surrounding whitespace; ``None`` if unset or blank.
    A password in it, if it holds an address with one (``alice:pw@host:11434``, with a scheme or
    without), is registered as a secret, as ``env_url`` does."""
    value = env(name) or None
    if value is not None and "@" in value:
        register_secret(_password(value))
    return value


def _password(value: str) -> str | None:
    """The password in the userinfo of ``value`` read as an address, if any."""
    try:
        return urlsplit(value if "://" in value else f"//{value}").password
    except ValueError:
        return None


def env_secret(name: str) -> str | None:
    """A key or token from ``name`` (``None`` if unset), registered as a secret.

    Stripped: a key mounted from a Kubernetes secret often ends in a newline. One that still
    holds whitespace, control or non-ASCII characters (a pasted curly quote) cannot go in a
    header: a ``ConfigError`` naming the variable, never showing the value.
    """
    value = env(name)
    if value is None:
        return None
    # Blank too: a key variable that is set holds a key (a blank one is a broken secret mount,
    # and an SDK left to read the variable itself would send it raw).
    if not value or _malformed(value) or not value.isascii():
        raise ConfigError(
            f"{name} contains whitespace, control or non-ASCII characters (its value is not shown): "
            "set it to the key alone."
        )
    register_secret(value)
    return value


def env_url(name: str, example: str, *, schemes: Collection[str] = ("http", "https")) -> str | None:
    """An http(s) URL from ``name`` (``None`` if unset or blank). A URL is no secret: a
    malformed one is shown in the error, with ``example`` of a good one; a password in it
    (``http://user:pw@host``) is registered as a secret and never shown."""
    value = env(name)
    if not value:
        return None
    register_secret(_password(value))
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in schemes or not parts.hostname or _malformed(value):
        raise ConfigError(f"{name}={redact(value)!r} is not valid: expected a URL like {example}.")
    return value


def _malformed(value: str) -> bool:
    """Whether ``value`` holds whitespace or a character that is not printable (a control
    character ...). Every whitespace character but the space is one that is not printable."""
    return not value.isprintable() or " " in value


def supported_options(
    request: ChatRequest,
    accepted: Collection[str],
    *,
    handled: Collection[str] = (),
    ignored: Mapping[str, str] | None = None,
    why: str = "",
) -> dict[str, Any]:
    """The options of ``request`` that are in ``accepted``, as plain data; the others are left
    out with a debug log on ``chatplug`` (an Ollama-only ``repeat_penalty`` would make another
    provider refuse the request). ``handled`` names options the backend maps itself (not
    returned, not logged); ``ignored`` adds settings the backend leaves out, each with its
    reason; ``why`` says why the others are not accepted."""
    passed: dict[str, Any] = {}
    dropped = dict(ignored or {})
    for key, value in request.options.items():
        if key in handled:
            continue
        if key in accepted:
            passed[key] = thaw(value)
        else:
            dropped[key] = why or f"the {request.backend} backend does not take it"
    for key, reason in dropped.items():
        logger.debug("%s: %s is not sent (%s)", request.backend, key, reason)
    return passed


def import_sdk(module: str, extra: str | None = None) -> ModuleType:
    """``module``, imported on first use (an SDK takes ~0.4 s); if it is not installed, a
    ``ConfigError`` with the exact command that installs it (``pip install "chatplug[extra]"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"this backend needs the {module} package ({exc}). Install it with: "
            f'pip install "chatplug[{extra or module}]"'
        ) from None
