"""The public backend toolkit, and the promises the core makes to every backend built on it:
secrets masked whoever raised, requests immutable, one rule per setting, the public names pinned."""

from __future__ import annotations

import ast
import asyncio
import http.cookiejar
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

import chatplug
import chatplug.toolkit
from chatplug import (
    AuthenticationError,
    ChatBackend,
    ChatRequest,
    ChatResult,
    ErrorKind,
    generate_completion_async,
    generate_completion_sync,
    hookimpl,
    settings,
)
from chatplug.toolkit import map_exceptions, retry_after, status_error, thaw

from .fakeserver import FakeServer, Reply
from .providers import headers_of

SRC = Path(chatplug.__file__).parent


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a decision: this list changes with it (as httpx's
    test_exported_members does)."""
    assert sorted(chatplug.__all__) == sorted(
        [
            "APIConnectionError", "APIError", "APIStatusError", "APITimeoutError", "AsyncStream", "AuthenticationError",
            "BadRequestError", "ChatBackend", "ChatChunk", "ChatRequest", "ChatResult", "ChatplugError", "ConfigError",
            "ContextLengthExceededError", "ErrorKind", "InvalidInputError", "InvalidOutputError",
            "InvalidResponseError", "LLMResponse", "Message", "NotFoundError", "OverloadedError", "PluginError",
            "RateLimitError", "ResponseFormat", "ServerError", "Settings", "Stream", "Tool", "ToolCall",
            "ToolCallDelta", "ToolRun", "UnknownBackendError", "__version__", "backend_names", "close",
            "BatchProgress", "generate_batch_async", "generate_batch_sync", "iter_batch_async", "iter_batch_sync",
            "generate_completion_async", "generate_completion_sync", "generate_completion_with_messages_async",
            "generate_completion_with_messages_sync", "hookimpl", "register_plugin", "run_tools_async",
            "run_tools_sync", "settings",
            "stream_completion_async", "stream_completion_sync", "stream_completion_with_messages_async",
            "stream_completion_with_messages_sync", "unregister_plugin",
        ]
    )  # fmt: skip
    for name in chatplug.__all__:
        assert getattr(chatplug, name) is not None
    for name in chatplug.toolkit.__all__:
        assert getattr(chatplug.toolkit, name) is not None


def test_version_comes_from_the_package_metadata() -> None:
    assert chatplug.__version__ == version("chatplug")


def test_no_backend_reaches_past_the_public_toolkit() -> None:
    """A built-in backend imports what a plugin can: ``chatplug``, ``chatplug.toolkit`` and its
    siblings under ``backends/``; never a private ``chatplug._module``."""
    for path in sorted((SRC / "backends").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
                assert node.level <= 1, f"{path.name} reaches into chatplug's private modules"
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("chatplug._"), f"{path.name} imports {name}"


def test_the_exception_tree() -> None:
    assert issubclass(
        chatplug.InvalidResponseError, chatplug.ServerError
    )  # `except ServerError` gets every server kind
    assert chatplug.ErrorKind is chatplug._core.exceptions.ErrorKind


# -- a plugin built on the toolkit -----------------------------------------------------------

KEY = "sk-plugin-secret-4242"


class Echoing401(ChatBackend):
    """A careless plugin: it puts the server's 401 body, which quotes the key, in its error."""

    default_model = "careless-1"

    def complete(self, request: ChatRequest) -> ChatResult:
        key = chatplug.toolkit.env_secret("CARELESS_API_KEY")
        raise AuthenticationError(f"401 from upstream: {{'error': 'bad key {key}'}}")

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return self.complete(request)


class NoDefaultModel(ChatBackend):
    def complete(self, request: ChatRequest) -> ChatResult:
        return ChatResult("ok", request.model)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        return self.complete(request)


class Plugin:
    @hookimpl
    def register_backends(self, register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
        register("careless", Echoing401)
        register("modelless", NoDefaultModel)


@pytest.fixture
def plugin() -> Iterator[None]:
    name = chatplug.register_plugin(Plugin(), "toolkit-test-plugin")
    yield
    chatplug.unregister_plugin(name)


def test_a_secret_read_through_the_toolkit_is_masked_whoever_raised(
    plugin: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CARELESS_API_KEY", KEY)
    caplog.set_level(logging.DEBUG, logger="chatplug")
    responses = [
        generate_completion_sync("Hi", backend="careless"),
        asyncio.run(generate_completion_async("Hi", backend="careless")),
    ]
    for response in responses:
        assert response.error_kind is ErrorKind.AUTH and "bad key ***" in (response.error or "")
        for text in (response.error, repr(response), repr(response.exception), str(response.to_dict())):
            assert KEY not in (text or "")
        with pytest.raises(AuthenticationError) as raised:
            response.raise_for_error()
        assert KEY not in str(raised.value) and raised.value.__context__ is None
    assert KEY not in caplog.text and "bad key ***" in caplog.text


def test_a_password_in_a_url_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_URL", "ftp://alice:hunter2-pw@example.invalid/v1")
    with pytest.raises(chatplug.ConfigError) as raised:
        chatplug.toolkit.env_url("SOME_URL", "http://host/v1")
    assert "hunter2-pw" not in str(raised.value) and "SOME_URL" in str(raised.value)


def test_a_backend_without_a_default_model_needs_one(plugin: None) -> None:
    response = generate_completion_sync("Hi", backend="modelless")
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert "LLM_MODEL_NAME" in (response.error or "") and "modelless" in (response.error or "")
    assert generate_completion_sync("Hi", "m", backend="modelless").content == "ok"


def test_an_observer_cannot_change_the_request(plugin: None) -> None:
    attempts: list[str] = []

    class Meddler:
        @hookimpl
        def on_request(self, request: ChatRequest) -> None:
            for change in (
                lambda: request.options.__setitem__("seed", 1),  # type: ignore[index]
                lambda: request.options["stop"].append("x"),
                lambda: request.messages[0].__setitem__("content", "changed"),
                lambda: setattr(request, "model", "other"),
            ):
                try:
                    change()
                    attempts.append("changed")
                except (TypeError, AttributeError):
                    attempts.append("refused")

    name = chatplug.register_plugin(Meddler(), "meddler")
    try:
        with chatplug.testing.scripted("ok") as fake:
            stop = ["\n"]
            generate_completion_sync("Hi", stop=stop)
    finally:
        chatplug.unregister_plugin(name)
    assert attempts == ["refused"] * 4
    (request,) = fake.requests
    assert thaw(request.options) == {"stop": ["\n"]} and request.messages[0]["content"] == "Hi" and stop == ["\n"]


def test_chat_request_builds_by_hand_with_the_settings_defaults() -> None:
    request = ChatRequest(messages=({"role": "user", "content": "Hi"},), model="m")
    assert (request.temperature, request.max_tokens, request.timeout, request.max_retries) == (0.7, 500, 120.0, 2)
    assert dict(request.options) == {} and request.backend == ""
    given: dict[str, object] = {}
    with pytest.raises(TypeError):  # read-only, even when given empty
        ChatRequest(messages=request.messages, model="m", options=given).options["seed"] = 1  # type: ignore[index]
    assert given == {}


# -- one rule per setting ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_a_blank_variable_is_unset_for_every_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    for var in ("LLM_BACKEND", "LLM_MODEL_NAME", "LLM_TEMPERATURE", "LLM_MAX_TOKENS", "LLM_TIMEOUT", "LLM_MAX_RETRIES",
                "LLM_FALLBACKS"):
        monkeypatch.setenv(var, value)
    assert (settings.backend, settings.model_name, settings.temperature, settings.max_tokens) == (
        "ollama",
        None,
        0.7,
        500,
    )
    settings.max_retries = None  # the default (conftest sets 0 for the suite)
    assert (settings.timeout, settings.max_retries, settings.fallbacks) == (120.0, 2, ())


@pytest.mark.parametrize(
    ("name", "value"), [("max_tokens", "lots"), ("max_tokens", 0), ("temperature", "hot"), ("timeout", -1)]
)
def test_settings_in_code_follow_the_same_rule(name: str, value: object) -> None:
    with pytest.raises(chatplug.ConfigError, match=f"settings.{name}="):
        setattr(settings, name, value)


def test_every_change_to_the_environment_applies_to_the_next_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read os.environ's own dict and keep the last parsed value of each variable: a
    change (set, changed, deleted, set back, made bad) is seen at once, never a stale value."""
    seen = []
    for value in ("0.1", "0.2", None, "0.1", " 0.2 "):
        if value is None:
            monkeypatch.delenv("LLM_TEMPERATURE", raising=False)
        else:
            monkeypatch.setenv("LLM_TEMPERATURE", value)
        seen.append(settings.temperature)
    assert seen == [0.1, 0.2, 0.7, 0.1, 0.2]
    monkeypatch.setenv("LLM_TEMPERATURE", "hot")
    for _ in range(2):  # a bad value is refused at every read, not remembered as the last good one
        with pytest.raises(chatplug.ConfigError, match="LLM_TEMPERATURE='hot'"):
            settings.temperature  # noqa: B018
    monkeypatch.setattr("os.environ", {"LLM_TEMPERATURE": "1.5"})  # a replaced mapping is read too
    assert settings.temperature == 1.5


def test_a_changed_key_or_url_is_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toolkit's readers check a value once, and again when it changes."""
    monkeypatch.setenv("ACME_KEY", "sk-good-key")
    monkeypatch.setenv("ACME_URL", "http://127.0.0.1:1/v1")
    assert chatplug.toolkit.env_secret("ACME_KEY") == "sk-good-key"
    assert chatplug.toolkit.env_url("ACME_URL", "http://host/v1") == "http://127.0.0.1:1/v1"
    monkeypatch.setenv("ACME_KEY", "sk-bad key")
    monkeypatch.setenv("ACME_URL", "ftp://127.0.0.1/v1")
    with pytest.raises(chatplug.ConfigError, match="ACME_KEY contains whitespace"):
        chatplug.toolkit.env_secret("ACME_KEY")
    with pytest.raises(chatplug.ConfigError, match=r"ACME_URL='ftp://127\.0\.0\.1/v1' is not valid"):
        chatplug.toolkit.env_url("ACME_URL", "http://host/v1")
    assert chatplug.toolkit.env_url("ACME_URL", "ftp://host", schemes=("ftp",)) == "ftp://127.0.0.1/v1"


def test_the_pipelines_request_is_the_constructors() -> None:
    """The pipeline builds requests without the frozen dataclass's ``__init__``: the same object."""
    import dataclasses

    fields = {
        "messages": [{"role": "user", "content": ({"type": "text", "text": "x"},)}], "model": "m", "temperature": 0.1,
        "max_tokens": 7, "timeout": 3.0, "options": {"stop": ["\n"]}, "backend": "b", "max_retries": 0,
        "tools": (), "tool_choice": "auto", "response_format": None, "deadline": 9.0,
    }  # fmt: skip
    assert set(fields) == {field.name for field in dataclasses.fields(ChatRequest)}
    from chatplug._pipeline.validate import checked_messages

    # The pipeline hands in the messages as the validation made them: read-only copies.
    checked = checked_messages([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    made = ChatRequest._of({**fields, "messages": checked})
    assert made == ChatRequest(**fields) and repr(made) == repr(ChatRequest(**fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.model = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        made.options["stop"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        made.messages[0]["content"][0]["text"] = "y"  # type: ignore[index]
    assert made.options["stop"] == ("\n",) and fields["options"] == {"stop": ["\n"]}  # a copy: the caller's is kept


def test_the_argument_and_the_environment_share_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    with chatplug.testing.scripted():
        by_argument = generate_completion_sync("Hi", temperature=2.5)
        monkeypatch.setenv("LLM_TEMPERATURE", "2.5")
        by_environment = generate_completion_sync("Hi")
    assert by_argument.error_kind is ErrorKind.INVALID_INPUT and by_environment.error_kind is ErrorKind.CONFIG
    assert "a number from 0 to 2" in (by_argument.error or "") and "a number from 0 to 2" in (
        by_environment.error or ""
    )


def test_a_misspelt_keyword_is_refused_not_sent() -> None:
    with chatplug.testing.scripted() as fake:
        response = generate_completion_sync("Hi", temprature=0)
    assert response.error_kind is ErrorKind.INVALID_INPUT and "'temperature'" in (response.error or "")
    assert fake.requests == []


def test_a_huge_bad_argument_is_not_echoed_whole() -> None:
    response = generate_completion_sync("Hi", temperature="x" * 1_000_000)  # type: ignore[arg-type]
    assert response.error_kind is ErrorKind.INVALID_INPUT and len(response.error or "") < 500


# -- error mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past: now
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_a_finite_wait_or_none(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(headers) == expected


def test_status_error_reads_the_providers_body_shapes() -> None:
    openai = status_error(429, b'{"error": {"message": "Slow down."}}', where="X", headers={"retry-after": "3"})
    assert isinstance(openai, chatplug.RateLimitError) and openai.retry_after == 3.0 and "Slow down." in str(openai)
    ollama = status_error(404, '{"error":"model \'x\' not found"}', where="X")
    assert isinstance(ollama, chatplug.NotFoundError) and "model 'x' not found" in str(ollama)
    long = status_error(400, {"error": {"message": "the prompt is too long for the context window"}}, where="X")
    assert isinstance(long, chatplug.ContextLengthExceededError)
    huge = status_error(500, b"<html>" + b"x" * 50_000_000 + b"</html>", where="X")
    assert isinstance(huge, chatplug.ServerError) and len(str(huge)) < 1000 and "[cut:" in str(huge)
    assert isinstance(status_error(529, b"", where="X"), chatplug.OverloadedError)


def test_map_exceptions_turns_the_http_stack_into_chatplug_errors(closed_port: int) -> None:
    def mapped(action: Callable[[], Any]) -> BaseException:
        with pytest.raises(chatplug.ChatplugError) as raised, map_exceptions(where="Acme", timeout=1):
            action()
        return raised.value

    with httpx.Client() as client:
        assert isinstance(mapped(lambda: client.get(f"http://127.0.0.1:{closed_port}/")), chatplug.APIConnectionError)
        assert isinstance(mapped(lambda: client.get("http://[::1")), chatplug.ConfigError)  # InvalidURL
        assert isinstance(mapped(lambda: client.get("ftp://example.invalid/")), chatplug.ConfigError)
    assert isinstance(mapped(lambda: (_ for _ in ()).throw(httpx.ReadTimeout("slow"))), chatplug.APITimeoutError)
    with pytest.raises(KeyError), map_exceptions(where="Acme"):
        raise KeyError("a bug stays a bug")


def test_lean_urls_does_nothing_now_and_says_it_will_go() -> None:
    """It changed the class of httpx's client, which a release of httpx could break (issue 25):
    a plugin that still calls it gets its client back untouched, and a DeprecationWarning."""
    with httpx.Client() as client:
        with pytest.warns(DeprecationWarning, match="lean_urls does nothing now and will be removed") as said:
            assert chatplug.toolkit.lean_urls(client) is client
        assert type(client) is httpx.Client
    assert said[0].filename == __file__  # the warning names the caller's line


class RecordingJar(http.cookiejar.CookieJar):
    """A cookie jar that counts the replies it is asked to read."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def extract_cookies(self, response: Any, request: Any) -> None:
        self.asked += 1
        super().extract_cookies(response, request)


@pytest.fixture
def cookie_server() -> Iterator[FakeServer]:
    """/plain answers without cookies; /login sets one."""
    server = FakeServer()
    server.route("GET", "/plain", Reply(200, b"{}", {"Content-Type": "application/json"}))
    server.route("GET", "/login", Reply(200, b"{}", {"Content-Type": "application/json", "Set-Cookie": "session=s1"}))
    yield server
    server.close()


def test_lean_cookies_reads_only_replies_that_set_one(cookie_server: FakeServer) -> None:
    jar = RecordingJar()
    with httpx.Client(base_url=cookie_server.url, cookies=jar) as client:
        assert chatplug.toolkit.lean_cookies(client) is client
        lean = client.cookies
        assert chatplug.toolkit.lean_cookies(client) is client and client.cookies is lean  # once is enough
        assert type(client) is httpx.Client and isinstance(lean, httpx.Cookies) and lean.jar is jar
        client.get("/plain")
        assert jar.asked == 0
        client.get("/login")
        assert jar.asked == 1 and client.cookies["session"] == "s1"
        client.get("/plain")
    assert jar.asked == 1
    # What the server saw: no cookie before it set one, then the cookie, as without lean_cookies.
    assert [headers_of(r).get("cookie") for r in cookie_server.requests] == [None, None, "session=s1"]


def test_lean_cookies_on_an_async_client(cookie_server: FakeServer) -> None:
    jar = RecordingJar()

    async def main() -> list[str | None]:
        async with chatplug.toolkit.lean_cookies(httpx.AsyncClient(base_url=cookie_server.url, cookies=jar)) as client:
            for path in ("/plain", "/login", "/plain"):
                await client.get(path)
        return [headers_of(r).get("cookie") for r in cookie_server.requests]

    assert asyncio.run(main()) == [None, None, "session=s1"]
    assert jar.asked == 1


def test_lean_cookies_leaves_other_objects_and_httpx_alone() -> None:
    assert chatplug.toolkit.lean_cookies(None) is None  # nothing with cookies: nothing to do
    with httpx.Client() as plain, chatplug.toolkit.lean_cookies(httpx.Client()) as lean:
        assert type(plain.cookies) is httpx.Cookies  # httpx's own class is untouched
        assert type(lean.cookies) is not httpx.Cookies and type(lean) is httpx.Client
