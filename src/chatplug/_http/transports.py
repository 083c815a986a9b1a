"""Async HTTP on aiohttp under httpx and httpx2 clients (public through ``chatplug.toolkit``).

httpx's async connection pool (httpcore) costs ~2.8 ms of CPU per request on a 2-core machine,
which caps an async client at a few hundred requests a second; aiohttp's costs a fraction of
that. ``AiohttpTransport`` is an ``AsyncBaseTransport`` of httpx (or httpx2) that sends each
request through an ``aiohttp.ClientSession``: the client above it (an SDK's) is unchanged, its
timeouts, retries, redirects, cookies and streaming its own, and every failure of aiohttp is
raised as the httpx exception httpx's own transport raises for it (a refused connection a
``ConnectError``, a reset a ``ReadError``, a cut-off body a ``RemoteProtocolError`` ...), so the
SDK and chatplug map it exactly as before.

``async_transport_options(http, ...)`` is what a backend passes to ``http.AsyncClient(...)`` (or
to an SDK that passes its keyword arguments on to it): ``{"transport": ..., "mounts": ...}`` with
one aiohttp transport for direct requests and one per proxy from the environment
(``HTTP(S)_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, read by the HTTP stack's own rules when
``trust_env``), each with the TLS context the stack itself would make (``SSL_CERT_FILE``,
``SSL_CERT_DIR``). It is ``{}`` -- the SDK's own httpx transport -- when ``LLM_ASYNC_TRANSPORT``
(``settings.async_transport``) is ``default``, or when aiohttp is not installed and the setting
was left at its default. It is read each time a client is made. aiohttp is imported on first use.

The aiohttp session is made on the first request (on the loop that sends it) and closed by the
client's ``aclose()``; ``ClientCache`` closes its clients when their loop shuts down.

Two private parts of the HTTP stack are used, each with its way out (``_core.internals``): its
``_utils.get_environment_proxies`` (without it, the proxy variables are read by httpx 0.28's
rules: ``_read_proxies``), and the back reference of httpx's response wrapper to its response
(``unbind``; without it, closed responses are left to the garbage collector). aiohttp's
exceptions are mapped by their public names: one that a release renames is mapped as the nearest
of its base classes that is still there (``ClientError`` at worst, a ``NetworkError``).
"""

from __future__ import annotations

import base64
import gc
import importlib
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._core.exceptions import ConfigError
from .._core.internals import describe, lost
from .._core.settings import settings

if TYPE_CHECKING:
    import aiohttp

logger = logging.getLogger("chatplug")

AIOHTTP, DEFAULT = "aiohttp", "default"

#: A socket option as httpx takes them: ``(level, option, value)``.
SocketOption = tuple[int, int, Any]

#: The response headers aiohttp reads at most: as large as httpcore's (h11's 100 kB event limit),
#: not aiohttp's 8 kB, so that no reply httpx reads is refused.
MAX_HEADER = 100_000


def aiohttp_installed() -> bool:
    try:
        importlib.import_module("aiohttp")
    except ImportError:
        return False
    return True


def use_aiohttp() -> bool:
    """Whether async clients made now go on aiohttp: ``LLM_ASYNC_TRANSPORT`` (``aiohttp`` by
    default). Left at its default without aiohttp installed: the SDK's own transport (with a
    debug log); set to ``aiohttp`` explicitly without it: a ``ConfigError`` with the install line."""
    if settings.async_transport != AIOHTTP:
        return False
    if aiohttp_installed():
        return True
    if settings.source("async_transport") > 0:  # set in the environment or in code
        raise ConfigError(
            'LLM_ASYNC_TRANSPORT=aiohttp needs the aiohttp package: pip install "chatplug[aiohttp]" '
            "(or set LLM_ASYNC_TRANSPORT=default)."
        )
    logger.debug("aiohttp is not installed: async clients use their SDK's own transport")
    return False


def async_transport_options(
    http: ModuleType | None = None,
    *,
    verify: ssl.SSLContext | str | bool = True,
    cert: Any = None,
    trust_env: bool = True,
    limits: Any = None,
    socket_options: Iterable[SocketOption] | None = None,
) -> dict[str, Any]:
    """Keyword arguments that put an ``http.AsyncClient`` (``httpx`` by default, or ``httpx2``)
    on aiohttp, as it would be configured on its own transport: ``verify``, ``cert``,
    ``trust_env``, ``limits`` (``http.Limits``) and ``socket_options`` mean what they mean to it,
    and proxies come from the environment by its rules when ``trust_env``. ``{}`` when
    ``use_aiohttp()`` says no: the client's own transport."""
    if not use_aiohttp():
        return {}
    http = http or importlib.import_module("httpx")
    options = dict(verify=verify, cert=cert, trust_env=trust_env, limits=limits, socket_options=socket_options)
    mounts: dict[str, Any] = {}
    if trust_env:
        for pattern, url in _environment_proxies(http).items():
            mounts[pattern] = None if url is None else aiohttp_transport(http, proxy=http.Proxy(url), **options)
    return {"transport": aiohttp_transport(http, **options), "mounts": mounts}


def _environment_proxies(http: ModuleType) -> dict[str, str | None]:
    """The proxies of the environment as mount patterns (``NO_PROXY`` hosts: ``None``), read by
    the HTTP stack's own ``get_environment_proxies``, so that async clients go where its sync ones
    do. That function is private (``httpx._utils``): without it, ``_read_proxies`` reads the same
    variables by httpx 0.28's rules (httpx2 also takes ``*.host`` and IPv6 networks in
    ``NO_PROXY``)."""
    try:
        utils = importlib.import_module(f"{http.__name__}._utils")
    except ImportError:
        utils = None
    read = getattr(utils, "get_environment_proxies", None)
    if not callable(read):
        lost(
            f"reading proxy variables by {http.__name__}'s own rules on async clients",
            f"{http.__name__}._utils has no get_environment_proxies; chatplug reads them by httpx 0.28's",
        )
        read = _read_proxies
    found: dict[str, str | None] = read()
    return found


def _read_proxies() -> dict[str, str | None]:
    """``httpx._utils.get_environment_proxies`` of httpx 0.28, on public ground: the proxies of
    ``urllib.request.getproxies()`` (the environment; the system's settings on Windows and macOS)
    for http, https and all, and a ``None`` mount for each ``NO_PROXY`` host, as curl reads them
    (``.example.com`` its subdomains, ``example.com`` itself too, ``*`` every host: no proxy)."""
    import ipaddress  # here: only when the stack's own reading is gone
    from urllib.request import getproxies

    found = getproxies()
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            mounts[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (host.strip() for host in found.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif _is_ip(host, ipaddress.IPv4Address) or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        elif _is_ip(host, ipaddress.IPv6Address):
            mounts[f"all://[{host}]"] = None
        else:
            mounts[f"all://*{host}"] = None
    return mounts


def _is_ip(host: str, kind: Callable[[str], object]) -> bool:
    """Whether ``host`` (or the network address before a ``/``) is an address ``kind`` parses."""
    try:
        kind(host.split("/")[0])
    except ValueError:
        return False
    return True


def aiohttp_transport(
    http: ModuleType | None = None,
    *,
    verify: ssl.SSLContext | str | bool = True,
    cert: Any = None,
    trust_env: bool = True,
    limits: Any = None,
    proxy: Any = None,
    socket_options: Iterable[SocketOption] | None = None,
) -> Any:
    """An ``http.AsyncBaseTransport`` (``httpx`` by default, or ``httpx2``) that sends requests
    through aiohttp: TLS as ``http.create_ssl_context(verify, cert, trust_env)`` makes it,
    ``limits.max_connections`` and ``keepalive_expiry`` as the pool's, through ``proxy`` (an
    ``http.Proxy``) if given."""
    http = http or importlib.import_module("httpx")
    return _classes(http)[0](http, verify, cert, trust_env, limits, proxy, socket_options)


_CLASSES: dict[str, tuple[type[Any], type[Any]]] = {}


def _classes(http: ModuleType) -> tuple[type[Any], type[Any]]:
    """The transport and the response stream classes for ``http``: subclasses of its own bases."""
    made = _CLASSES.get(http.__name__)
    if made is None:
        stream = type("AiohttpResponseStream", (_ResponseStream, http.AsyncByteStream), {"__slots__": ()})
        transport = type("AiohttpTransport", (_Transport, http.AsyncBaseTransport), {"_stream": stream})
        made = _CLASSES[http.__name__] = (transport, stream)
    return made


#: aiohttp's exceptions, most specific first, and the name of the httpx exception each stands
#: for: what httpx's own transport raises for the same failure.
_MAPPED: tuple[tuple[str, str], ...] = (
    ("ConnectionTimeoutError", "ConnectTimeout"),
    ("SocketTimeoutError", "ReadTimeout"),
    ("ServerTimeoutError", "ReadTimeout"),
    ("ClientProxyConnectionError", "ProxyError"),
    ("ClientHttpProxyError", "ProxyError"),
    ("ClientConnectorError", "ConnectError"),  # refused, DNS, TLS handshake
    ("ServerDisconnectedError", "RemoteProtocolError"),  # closed before (all of) the reply
    ("ClientPayloadError", "RemoteProtocolError"),  # a body cut short
    ("ClientResponseError", "RemoteProtocolError"),  # a reply that is no HTTP
    ("InvalidUrlClientError", "UnsupportedProtocol"),
    ("NonHttpUrlClientError", "UnsupportedProtocol"),
    ("InvalidURL", "InvalidURL"),
    ("ClientOSError", "ReadError"),  # a reset, a broken pipe
    ("ClientConnectionError", "ReadError"),
    ("ClientError", "NetworkError"),
)


@contextmanager
def _mapped(http: ModuleType) -> Iterator[None]:
    """aiohttp's exceptions raised as ``http``'s (the original as the cause)."""
    import aiohttp

    try:
        yield
    except aiohttp.ClientError as exc:
        for source, target in _MAPPED:
            kind = getattr(aiohttp, source, None)
            if kind is not None and isinstance(exc, kind):
                raise getattr(http, target)(str(exc) or type(exc).__name__) from exc
        raise  # pragma: no cover - ClientError is last


def _headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The request's headers as aiohttp takes them (text it writes as UTF-8): the bytes httpx
    encoded, names in the case they were given (``Headers.multi_items()`` would lowercase them),
    as httpx's own transport sends them."""
    try:
        return [(name.decode("ascii"), value.decode("utf-8")) for name, value in raw]
    except UnicodeDecodeError:  # a value given as bytes that are no UTF-8: as Latin-1
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


class _ResponseStream:
    """The body of an aiohttp response, as an ``AsyncByteStream`` (a subclass per HTTP stack)."""

    __slots__ = ("_http", "_owner", "_response")

    def __init__(self, http: ModuleType, response: aiohttp.ClientResponse) -> None:
        self._http, self._response = http, response
        self._owner: Any = None  # the client's response for this stream, until it is closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._http):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Returned to the pool if read to its end; otherwise its connection is closed at once.
        self._response.release()
        unbind(self)


def unbind(stream: Any) -> None:
    """Give ``stream._owner``, the client's response for a closed ``stream``, the stream itself
    back in place of httpx's wrapper (``BoundAsyncStream``), and forget it.

    The wrapper refers back to the response: a cycle, which only the garbage collector frees (with
    500 async ollama calls in flight to the loopback fake server, 7.6-15.3% more CPU a call,
    ~50-180 us: ``tests/benchmarks/bench_kept.py``, medians of five runs on 2 shared cores).
    Without it, the response is freed with its last reference; the wrapper has set its elapsed
    time by now. httpx2's wrapper keeps no response, and is left in place (its response reads the
    elapsed time from it)."""
    owner, stream._owner = stream._owner, None
    if owner is not None and _refers_back(owner.stream, owner):
        owner.stream = stream


#: The wrapper classes found without a ``_response`` (httpx2's), each checked once (``_refers_back``).
_CHECKED: set[type[Any]] = set()


def _refers_back(wrapper: object, response: object) -> bool:
    """Whether ``wrapper`` refers back to ``response`` as httpx's ``BoundAsyncStream`` does, by its
    private ``_response``. A wrapper class without one is looked at once: one that refers to its
    response by another name (a release of httpx that renamed it) is left in place, and its
    responses to the collector, said once; httpx2's refers to none, and is left in place too."""
    back = getattr(wrapper, "_response", None)
    if back is not None:
        return back is response
    kind = type(wrapper)
    if kind not in _CHECKED:
        _CHECKED.add(kind)
        if _holds(wrapper, response):
            lost(
                "freeing async responses without the garbage collector",
                f"{describe(kind)} refers to its response, but not as _response",
            )
    return False


def _holds(thing: object, target: object) -> bool:
    """Whether ``thing`` refers to ``target``, itself or through its ``__dict__``."""
    return any(
        found is target or (isinstance(found, dict) and any(value is target for value in found.values()))
        for found in gc.get_referents(thing)
    )


def _proxy_auth(proxy: Any) -> bytes | None:
    """``user:password`` of an ``http.Proxy`` (``None`` if it has none), as UTF-8: its ``auth``,
    which it takes from its URL's user information, or that information if it is still there."""
    if proxy is None:
        return None
    auth = proxy.auth
    if auth is None and (proxy.url.username or proxy.url.password):
        auth = (proxy.url.username, proxy.url.password)
    return None if auth is None else b":".join(str(part).encode("utf-8") for part in auth)


#: TLS contexts by configuration, shared: loading the system's CA certificates takes ~40 ms, and
#: every event loop makes its own clients (an ``asyncio.run()`` per call paid it on each). An
#: ``SSLContext`` is made to serve any number of connections, from any thread.
_SSL_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}


def tls_context(http: ModuleType | None = None) -> ssl.SSLContext:
    """The TLS context ``http``'s own client would make (``httpx`` by default, or ``httpx2``): the
    system's certificates, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``. Made once per configuration
    and shared: each takes ~50 ms to load the certificates."""
    return _ssl_context(http or importlib.import_module("httpx"), True, None, True)


def _ssl_context(http: ModuleType, verify: ssl.SSLContext | str | bool, cert: Any, trust_env: bool) -> ssl.SSLContext:
    """``http.create_ssl_context(verify, cert, trust_env)``, made once per configuration (the
    certificate variables it reads from the environment included)."""
    if isinstance(verify, ssl.SSLContext):
        return http.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[no-any-return]
    where = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")) if trust_env else ()
    key = (http.__name__, verify, cert, trust_env, *where)
    try:
        context = _SSL_CONTEXTS.get(key)
    except TypeError:  # a cert given as a list: not a key
        return http.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[no-any-return]
    if context is None:
        context = _SSL_CONTEXTS[key] = http.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
    return context


class _Transport:
    """aiohttp under an httpx client (a subclass per HTTP stack; see ``aiohttp_transport``)."""

    _stream: type[Any]

    def __init__(
        self,
        http: ModuleType,
        verify: ssl.SSLContext | str | bool,
        cert: Any,
        trust_env: bool,
        limits: Any,
        proxy: Any,
        socket_options: Iterable[SocketOption] | None,
    ) -> None:
        import aiohttp  # noqa: F401 - without aiohttp, making the transport fails, not its first request

        self._http = http
        self._ssl = _ssl_context(http, verify, cert, trust_env)
        limits = limits or http.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's default
        self._limit: int = limits.max_connections or 0  # 0: no limit
        self._keepalive: float | None = limits.keepalive_expiry
        self._socket_options = list(socket_options or ())
        self._proxy = str(proxy.url) if proxy is not None else None
        headers = dict(proxy.headers) if proxy is not None and proxy.headers else {}
        auth = _proxy_auth(proxy)
        if auth:  # sent as httpcore sends it (aiohttp's BasicAuth is deprecated)
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(auth).decode("ascii")
        self._proxy_headers = headers or None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self._limit,
            ssl=self._ssl,
            keepalive_timeout=self._keepalive if self._keepalive is not None else 3600.0,
            socket_factory=self._socket if self._socket_options else None,
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the client's, as with httpx's transport
            auto_decompress=False,  # the client decodes the body, as it does with httpx's transport
            trust_env=False,  # proxies are the client's mounts
            max_line_size=MAX_HEADER,
            max_field_size=MAX_HEADER,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def _socket(self, info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, _ = info
        sock = socket.socket(family=family, type=kind, proto=proto)
        try:
            for option in self._socket_options:
                sock.setsockopt(*option)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def handle_async_request(self, request: Any) -> Any:
        import aiohttp

        http = self._http
        if self._closed:
            raise RuntimeError("Cannot send a request, as the transport has been closed.")
        session = self._session
        if session is None:
            session = self._session = self._open()
        timeout: Mapping[str, float | None] = request.extensions.get("timeout", {})
        connect, pool = timeout.get("connect"), timeout.get("pool")
        try:
            data: Any = request.content or None
        except http.RequestNotRead:  # a streamed body: aiohttp sends it chunked
            data = request.stream.__aiter__()
            request.headers.pop("transfer-encoding", None)
        with _mapped(http):
            response = await session.request(
                request.method,
                self._aiohttp_url(request.url),
                headers=_headers(request.headers.raw),
                data=data,
                allow_redirects=False,  # the client follows redirects itself
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # aiohttp's connect covers the wait for a pooled connection and the connect
                    connect=None if connect is None or pool is None else connect + pool,
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
            )
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("ascii", "replace")
        stream = self._stream(http, response)
        stream._owner = made = http.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )
        return made

    def _aiohttp_url(self, url: Any) -> Any:
        import yarl

        if url.userinfo:  # the client has made its auth of it; httpx's transport ignores it, aiohttp would not
            url = url.copy_with(userinfo=b"")
        return yarl.URL(str(url), encoded=True)  # sent as httpx encoded it, not re-quoted

    async def aclose(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
