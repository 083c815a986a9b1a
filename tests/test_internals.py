"""Guard tests: each private attribute or internal behaviour of a dependency that chatplug uses
(listed in ``chatplug._core.internals``) is taken away here, as a release of that dependency might, and
a real call on the loopback fake server still succeeds, losing only the speed-up or the extra
bound, with exactly one warning that says so.

A renamed attribute is played by ``renamed``: the dependency's own methods still find it, at the
moments they run, under its old name; chatplug, which looks at other moments, does not."""

from __future__ import annotations

import asyncio
import datetime
import inspect
import logging
import sys
import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import aiohttp
import httpcore
import httpcore2
import httpx
import httpx2
import ollama as ollama_sdk
import pydantic
import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse, generate_completion_async, generate_completion_sync
from chatplug._core.exceptions import APIConnectionError, APITimeoutError
from chatplug._core.internals import forget
from chatplug._http import transports
from chatplug._http.errors import transport_error

from .conftest import ollama_reply
from .fakeserver import FakeServer
from .providers import ANTHROPIC, OPENAI, warnings_logged

#: The HTTP stack under each backend's SDK.
STACKS = {"ollama": httpx, "openai": httpx2, "anthropic": httpx2}


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Backends and clients made anew, by the dependency as the test changes it, and every
    warning said again. (After ``monkeypatch``: the clients close before the change is undone.)"""
    chatplug.close()
    forget()
    transports._CHECKED.clear()
    caplog.set_level(logging.WARNING, logger="chatplug")
    yield
    chatplug.close()
    forget()
    transports._CHECKED.clear()


@pytest.fixture(params=list(STACKS))
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fake server for each backend in turn, which ``LLM_BACKEND`` selects."""
    name: str = request.param
    server = FakeServer()
    if name == "ollama":
        server.route("POST", "/api/chat", ollama_reply("chat_nonstream_200.json"))
        monkeypatch.setenv("OLLAMA_HOST", server.url)
    else:
        provider = OPENAI if name == "openai" else ANTHROPIC
        provider.route(server, provider.reply(provider.success))
        monkeypatch.setenv(provider.base_url_env, server.url + provider.base_url_path)
        monkeypatch.setenv(provider.key_env, "sk-test")
    monkeypatch.setenv("LLM_BACKEND", name)
    yield name
    chatplug.close()
    server.close()


def renamed(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, *methods: str) -> None:
    """``cls`` as a release that keeps its objects' ``name`` (set in ``__init__``) under another
    name: each of ``methods``, the ones that use it, finds it under ``name`` while it runs."""
    hidden = f"_renamed{name}"
    init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        setattr(self, hidden, self.__dict__.pop(name))

    monkeypatch.setattr(cls, "__init__", __init__)
    for method in methods:
        monkeypatch.setattr(cls, method, finding(getattr(cls, method), name, hidden))


def finding(method: Any, name: str, hidden: str) -> Any:
    """``method``, which finds ``name`` while it runs (a coroutine function: while it is awaited)."""
    if inspect.iscoroutinefunction(method):

        async def arun(self: Any, *args: Any, **kwargs: Any) -> Any:
            there = name in self.__dict__
            self.__dict__[name] = getattr(self, hidden)
            try:
                return await method(self, *args, **kwargs)
            finally:
                if not there:
                    self.__dict__.pop(name, None)

        return arun

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        there = name in self.__dict__  # a method called by another: the outer one takes it away
        self.__dict__[name] = getattr(self, hidden)
        try:
            return method(self, *args, **kwargs)
        finally:
            if not there:
                del self.__dict__[name]

    return run


def changed(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, change: Any) -> None:
    """``cls`` as a release that keeps its objects' ``name`` as ``change(value)``: another kind of
    object, which its own methods use as they did."""
    init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        setattr(self, name, change(getattr(self, name)))

    monkeypatch.setattr(cls, "__init__", __init__)


class StandIn:
    """What a release might keep instead of an httpx client: not one, but one that works."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def said_once(caplog: pytest.LogCaptureFixture, *words: str) -> None:
    (warning,) = warnings_logged(caplog)
    assert all(word in warning for word in words), warning
    assert "Calls still work" in warning


def succeeds(response: LLMResponse) -> None:
    assert response.success, response.error
    assert response.content


def ask_async(**options: Any) -> LLMResponse:
    return asyncio.run(generate_completion_async("Hi", **options))


# -- none of this warns while the dependencies are as chatplug expects them ------------------


def test_no_guard_warns_on_the_dependencies_installed(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    succeeds(generate_completion_sync("Hi"))
    succeeds(ask_async())
    assert warnings_logged(caplog) == []


# -- the ollama SDK ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["renamed", "changed"])
def test_the_ollama_sdks_http_client(
    how: str, ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: ``ollama.Client._client``, which ``deadline_client`` wraps. Without it, sync calls
    lose only their overall deadline (the SDK's per-operation timeouts stay)."""
    if how == "renamed":
        renamed(monkeypatch, ollama_sdk.Client, "_client", "_request_raw", "close")
    else:
        changed(monkeypatch, ollama_sdk.Client, "_client", StandIn)
    for _ in range(2):  # said once, not per call
        succeeds(generate_completion_sync("Hi", backend="ollama"))
    why = "ollama.Client has no _client" if how == "renamed" else "_client is a tests.StandIn, not a httpx.Client"
    said_once(caplog, "overall deadline of sync ollama calls", why)


def test_the_ollama_sdks_async_http_client(
    ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: ``ollama.AsyncClient._client``, whose cookie jar ``lean_cookies`` makes read only
    replies that set a cookie. Without it, async calls read every reply's cookies, as httpx does."""
    renamed(monkeypatch, ollama_sdk.AsyncClient, "_client", "_request_raw", "close")

    async def twice() -> list[LLMResponse]:
        return [await generate_completion_async("Hi", backend="ollama") for _ in range(2)]

    for response in asyncio.run(twice()):
        succeeds(response)
    said_once(caplog, "lean cookies on async ollama calls", "ollama.AsyncClient has no _client")


class ChatRequestOfOtherFields(pydantic.BaseModel):
    model: str


def _request_of_another_shape(original: Any) -> Any:
    """A ``_request`` that takes what the SDK's own ``chat`` gives it (``json=``), but no ``content``."""

    def _request(self: Any, cls: Any, method: str, url: str, *, json: Any = None, stream: bool = False) -> Any:
        return original(self, cls, method, url, json=json, stream=stream)

    return _request


@pytest.mark.parametrize(
    ("owner", "name", "change"),
    [
        ("_types", "ChatRequest", None),
        ("AsyncClient", "_request", None),
        ("Client", "_request", _request_of_another_shape),
        ("_types", "ChatRequest", lambda _: ChatRequestOfOtherFields),
    ],
    ids=["ChatRequest gone", "_request gone", "_request of another signature", "ChatRequest of other fields"],
)
def test_the_ollama_sdks_request_model(
    owner: str,
    name: str,
    change: Any,
    ollama: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guard: ``ollama._types.ChatRequest`` and the clients' ``_request``, with which the backend
    sends each tool's JSON Schema whole. Without either, or with either changed, tools go through
    the SDK's ``chat``."""
    if change is None:
        monkeypatch.delattr(getattr(ollama_sdk, owner), name)
    else:
        monkeypatch.setattr(getattr(ollama_sdk, owner), name, change(getattr(getattr(ollama_sdk, owner), name)))
    weather = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    succeeds(generate_completion_sync("Weather in Paris?", backend="ollama", tools=[weather]))
    (tool,) = ollama.requests[-1].json()["tools"]
    assert tool["function"]["name"] == "get_weather"
    said_once(caplog, "JSON Schema whole to ollama", "no ollama._types.ChatRequest model", "or no Client._request")


@pytest.mark.parametrize("how", ["renamed", "changed"])
def test_the_http_clients_cookies(
    how: str, ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: httpx's ``Client._cookies``, which ``lean_cookies`` replaces with chatplug's own
    ``httpx.Cookies`` subclass over the same jar. Without it, the reply's cookies are read as httpx
    reads them; a cookie the server sets is still kept and sent."""
    if how == "renamed":
        renamed(monkeypatch, httpx.Client, "_cookies", "_send_single_request", "_merge_cookies", "close")
        monkeypatch.setattr(httpx.Client, "cookies", property(lambda self: self._renamed_cookies))
    else:
        changed(monkeypatch, httpx.Client, "_cookies", lambda cookies: cookies.jar)  # a bare CookieJar
        monkeypatch.setattr(httpx.Client, "cookies", property(lambda self: httpx.Cookies(self._cookies)))
    for _ in range(2):  # said once, not per call
        succeeds(generate_completion_sync("Hi", backend="ollama"))
    why = "httpx.Client has no _cookies" if how == "renamed" else "_cookies is a http.CookieJar"
    said_once(caplog, "reading a reply's cookies only when it sets one", why)


# -- httpx, httpx2 and httpcore under the sync clients (deadline_client) ----------------------


@pytest.mark.parametrize("how", ["_transport renamed", "_mounts changed"])
def test_the_http_clients_transports(
    how: str, backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: ``Client._transport`` and ``_mounts`` of httpx (ollama) and httpx2 (openai,
    anthropic), which ``deadline_client`` wraps. Without them, sync calls lose only their overall
    deadline, and no longer fail with ``TypeError``."""
    client = STACKS[backend].Client
    if how == "_transport renamed":
        renamed(monkeypatch, client, "_transport", "_transport_for_url", "close", "__enter__", "__exit__")
    else:
        changed(monkeypatch, client, "_mounts", MappingProxyType)  # read-only: cannot be wrapped in place
    succeeds(generate_completion_sync("Hi"))
    why = "Client has no _transport" if how == "_transport renamed" else "_mounts is a mappingproxy, not a dict"
    said_once(caplog, "overall deadline of sync calls", why)


@pytest.mark.parametrize("what", ["_pool", "_network_backend"])
def test_the_connection_pools_sockets(
    what: str, backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: ``HTTPTransport._pool`` and httpcore's ``ConnectionPool._network_backend``, through
    which ``DeadlineTransport`` bounds each socket operation. Without them, that bound is lost (the
    wait for a pooled connection keeps it)."""
    http = STACKS[backend]
    if what == "_pool":
        renamed(monkeypatch, http.HTTPTransport, "_pool", "handle_request", "close", "__enter__", "__exit__")
    else:
        core = httpcore2 if http is httpx2 else httpcore
        renamed(monkeypatch, core.ConnectionPool, "_network_backend", "create_connection")
    succeeds(generate_completion_sync("Hi"))
    said_once(caplog, "deadline on each socket operation", f"has no {what}")


# -- the async transport -------------------------------------------------------------------


def test_httpxs_response_wrapper(
    ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: the back reference of httpx's ``BoundAsyncStream`` to its response (``_response``),
    which ``unbind`` breaks. Renamed, the response is left to the garbage collector."""
    wrapper = httpx._client.BoundAsyncStream

    async def aclose(self: Any) -> None:  # httpx's own, with the reference renamed
        self._renamed_response.elapsed = datetime.timedelta(seconds=time.perf_counter() - self._start)
        await self._stream.aclose()

    renamed(monkeypatch, wrapper, "_response")
    monkeypatch.setattr(wrapper, "aclose", aclose)
    for _ in range(2):
        succeeds(ask_async(backend="ollama"))
    said_once(caplog, "freeing async responses without the garbage collector", "_response")


def test_the_stacks_reading_of_proxy_variables(
    ollama: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: ``httpx._utils.get_environment_proxies``, by which the aiohttp transports read the
    proxy variables. Without it, chatplug reads them by httpx 0.28's rules: HTTP_PROXY still sends
    the call through the proxy (the fake server, answering the absolute URL)."""
    monkeypatch.delattr(httpx._utils, "get_environment_proxies")
    ollama.route("POST", "http://ollama.invalid:11434/api/chat", ollama_reply("chat_nonstream_200.json"))
    monkeypatch.setenv("OLLAMA_HOST", "http://ollama.invalid:11434")
    monkeypatch.setenv("HTTP_PROXY", ollama.url)
    succeeds(ask_async(backend="ollama"))
    assert ollama.requests[-1].path == "http://ollama.invalid:11434/api/chat"
    said_once(caplog, "reading proxy variables by httpx's own rules", "get_environment_proxies")


@pytest.mark.parametrize(
    "variables",
    [
        {"HTTP_PROXY": "http://proxy.test:3128", "HTTPS_PROXY": "proxy.test:3129", "ALL_PROXY": "socks5://s.test"},
        {"HTTPS_PROXY": "http://u:p@proxy.test", "NO_PROXY": "localhost, .internal.test,example.com"},
        {"HTTP_PROXY": "http://proxy.test", "NO_PROXY": "127.0.0.1,::1,192.168.0.0/16,http://direct.test"},
        {"HTTP_PROXY": "http://proxy.test", "NO_PROXY": "a.test,*"},
        {},
    ],
)
def test_chatplugs_reading_of_proxy_variables_is_httpxs(
    variables: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way out above reads what httpx 0.28 reads."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for spelt in (name, name.lower()):
            monkeypatch.delenv(spelt, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert transports._read_proxies() == httpx._utils.get_environment_proxies()


@pytest.mark.parametrize("backend", ["openai", "anthropic"], indirect=True)
def test_the_sdks_async_http_client(
    backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: the SDK's ``DefaultAsyncHttpxClient``, an ``AsyncClient`` of httpx2 that chatplug
    puts on aiohttp. A release whose class is none: the SDK's own default client, as it is."""
    sdk = __import__(backend)
    monkeypatch.setattr(sdk, "DefaultAsyncHttpxClient", type("DefaultAsyncHttpxClient", (), {}))
    succeeds(ask_async())
    said_once(caplog, f"aiohttp transport on async {backend} calls", "DefaultAsyncHttpxClient")


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_the_sdks_sync_http_client(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Guard: the SDK's ``DefaultHttpxClient``, a ``Client`` of httpx2 that ``deadline_client``
    wraps. One of a stack chatplug does not know (the SDK checks its own; a call cannot be made
    here with another) goes as it is, without the overall deadline, where it used to raise
    ``TypeError`` on every sync call."""
    from chatplug._plugins import plugins

    backend = plugins().backends.get(name)
    other = type("Client", (), {})()
    assert backend.bounded(other) is other and backend.bounded(other) is other
    said_once(caplog, f"overall deadline of sync {name} calls", "DefaultHttpxClient is no Client of httpx2 or httpx")


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("DEPRECATED_MODELS", "old models"),
        ("MODELS_TO_WARN_WITH_THINKING_ENABLED", "models thinking adaptively"),
        ("messages_create_request_attributes", "its OpenTelemetry span"),
    ],
)
def test_the_anthropic_sdks_tables(
    name: str, what: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard: the anthropic SDK's messages-module tables with which chatplug warns of a model
    and opens the span as ``create()`` does. A release without one: calls go on without that."""
    import anthropic
    import anthropic.resources.messages.messages as tables

    assert sys.modules[anthropic.resources.Messages.create.__module__] is tables
    monkeypatch.delattr(tables, name)
    server = FakeServer()
    try:
        ANTHROPIC.route(server, ANTHROPIC.reply(ANTHROPIC.success))
        monkeypatch.setenv(ANTHROPIC.base_url_env, server.url + ANTHROPIC.base_url_path)
        monkeypatch.setenv(ANTHROPIC.key_env, "sk-test")
        succeeds(generate_completion_sync("Hi", backend="anthropic"))
    finally:
        chatplug.close()
        server.close()
    said_once(caplog, f"anthropic's handling of {what}", f"has no {name}")


def test_a_proxys_user_and_password_go_as_its_stack_sends_them() -> None:
    """A proxy's credentials come from its public ``auth`` (httpx moves a URL's into it)."""
    for proxy in (
        httpx.Proxy("http://proxy.test", auth=("ann", "pässword")),
        httpx.Proxy("http://ann:p%C3%A4ssword@proxy.test"),
    ):
        assert transports._proxy_auth(proxy) == "ann:pässword".encode()
    assert transports._proxy_auth(httpx.Proxy("http://proxy.test")) is None


# -- exceptions, mapped by their class names ---------------------------------------------------


def test_an_aiohttp_exception_renamed_still_maps_to_a_connection_error(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's exceptions are mapped by name: with ``ClientConnectorError`` gone from aiohttp,
    a refused connection is mapped by its base class (``ClientOSError``): a connection error."""
    monkeypatch.delattr(aiohttp, "ClientConnectorError")
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{closed_port}")
    response = ask_async(backend="ollama")
    assert response.error_kind is ErrorKind.CONNECTION, response.error


def test_an_http_exception_of_a_name_unknown_maps_by_its_bases() -> None:
    """A class a release of httpx names anew is mapped by the names of its bases."""
    refused = type("ConnectFailed", (httpx.TransportError,), {})("refused")
    slow = type("WaitedTooLong", (httpx.TimeoutException,), {})("slow")
    assert isinstance(transport_error(refused, where="X"), APIConnectionError)
    assert isinstance(transport_error(slow, where="X"), APITimeoutError)
    assert transport_error(type("Unheard", (Exception,), {})(), where="X") is None  # none of the stack's
