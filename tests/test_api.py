"""The pipeline: configuration, precedence, validation and the response contract."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest

import chatplug
from chatplug import ErrorKind, LLMResponse, generate_completion_sync, generate_completion_with_messages_sync, settings

from .fakeserver import FakeServer


def sent(server: FakeServer, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = server.requests[index].json()
    return body


def test_public_api_and_seed_module() -> None:
    from chatplug import chat_completion

    for name in (
        "generate_completion_sync",
        "generate_completion_async",
        "generate_completion_with_messages_sync",
        "generate_completion_with_messages_async",
        "LLMResponse",
    ):
        assert getattr(chat_completion, name) is getattr(chatplug, name)
    assert chatplug.ChatBackend and chatplug.hookimpl


def test_llm_response_keeps_the_seed_field_order() -> None:
    names = [f.name for f in dataclasses.fields(LLMResponse)]
    assert names[:6] == ["content", "tokens_used", "response_time", "model_used", "success", "error"]
    response = LLMResponse("hi", 5, 0.1, "m", True)
    assert response.error is None and response.raise_for_error() is response


@pytest.mark.parametrize("cls", [chatplug.ChatRequest, chatplug.ChatResult, LLMResponse])
def test_the_public_records_behave_as_generated_dataclasses(cls: type) -> None:
    """repr, == and hash are written once for the three (``_core.values._Record``), not generated: each
    behaves as ``@dataclass`` would have made it, checked against a dataclass made from its fields."""
    frozen = cls is not LLMResponse
    reference = dataclasses.make_dataclass(
        cls.__name__, [(f.name, Any, f) for f in dataclasses.fields(cls)], frozen=frozen, namespace={}
    )
    reference.__qualname__ = cls.__qualname__
    values = {
        chatplug.ChatRequest: {"messages": ({"role": "user", "content": "Hi"},), "model": "m"},
        chatplug.ChatResult: {"content": "Hi", "model": "m", "tool_calls": ()},
        LLMResponse: {"content": "Hi", "tokens_used": 3, "response_time": 0.1, "model_used": "m", "success": True},
    }[cls]
    ours, theirs = cls(**values), reference(**values)
    assert repr(ours) == repr(theirs).replace("{'role'", "mappingproxy({'role'").replace("'Hi'}", "'Hi'})")
    assert ours == cls(**values) and (ours != cls(**values)) is False
    assert (
        ours != dataclasses.replace(ours, model="other") if frozen else ours != dataclasses.replace(ours, content="x")
    )
    assert ours != theirs and ours.__eq__(theirs) is NotImplemented  # another class is never equal
    if frozen:
        assert hash(ours) == hash(cls(**values)) if cls is chatplug.ChatResult else ours.__hash__ is not None
        with pytest.raises(dataclasses.FrozenInstanceError):
            ours.model = "x"
    else:
        assert type(ours).__hash__ is None  # mutable with ==, so unhashable, as a dataclass
        ours.exception = chatplug.ChatplugError("boom")  # compare=False, repr=False: neither shown nor compared
        assert ours == cls(**values) and "boom" not in repr(ours)
        ours.parsed = ours  # a value that holds itself is shown as "...", not a RecursionError
        assert "parsed=...," in repr(ours)


def test_a_call_reads_the_settings_once_and_again_after_any_change(
    monkeypatch: pytest.MonkeyPatch, ollama: FakeServer
) -> None:
    """``settings.snapshot()``: one read of the environment per call, which sees every change of
    a variable or of a value set in code; a bad value fails only what reads it."""
    monkeypatch.delenv("LLM_TEMPERATURE", raising=False)
    assert settings.snapshot().temperature == settings.temperature
    monkeypatch.setenv("LLM_TEMPERATURE", "0.3")
    assert settings.snapshot().temperature == 0.3
    settings.max_tokens = 9
    try:
        assert settings.snapshot().max_tokens == 9
        assert generate_completion_sync("Hi").success and ollama.requests[-1].json()["options"]["num_predict"] == 9
    finally:
        settings.max_tokens = None
    assert settings.snapshot().max_tokens == 500
    monkeypatch.setenv("LLM_CACHE_TTL", "soon")  # read only with a cache: calls without one go on
    assert generate_completion_sync("Hi").success
    for _ in range(2):  # a fresh error each time, from the setting itself
        with pytest.raises(chatplug.ConfigError, match="LLM_CACHE_TTL='soon' is not valid"):
            settings.snapshot().cache_ttl  # noqa: B018
    import os

    monkeypatch.setattr(os, "environ", {"LLM_TEMPERATURE": " 1.5 "})  # any mapping in its place is read too
    assert settings.snapshot().temperature == 1.5 and settings.snapshot().cache_ttl is None
    with pytest.raises(AttributeError, match="read-only"):
        settings.snapshot().temperature = 2.0  # every call shares it: nobody may change it


def test_a_snapshot_holds_one_read_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot holds the values of one read of the environment: another thread changing a
    variable and putting it back while the snapshot is made changes nothing in it, nor in later ones."""
    from chatplug._core import settings as _config

    made = _config.Snapshot.__init__

    def racing(self: Any, *args: Any) -> None:
        monkeypatch.setenv("LLM_MODEL_NAME", "other")  # another thread, in the middle ...
        made(self, *args)
        monkeypatch.delenv("LLM_MODEL_NAME")  # ... and back

    monkeypatch.delenv("LLM_MODEL_NAME", raising=False)
    monkeypatch.setenv("LLM_TIMEOUT", "7")
    monkeypatch.setattr(_config.Snapshot, "__init__", racing)
    raced = settings.snapshot()
    monkeypatch.setattr(_config.Snapshot, "__init__", made)
    assert raced.model_name is None and raced.timeout == 7.0
    assert settings.snapshot().model_name is None and settings.snapshot().timeout == 7.0


def test_settings_errors_come_in_the_order_they_always_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the settings once per call changed no error: a bad prompt is still reported before
    a bad LLM_TEMPERATURE (read when the request is built), and a bad LLM_MAX_RETRIES before a
    bad fallback (read in the order of the options)."""
    monkeypatch.setenv("LLM_TEMPERATURE", "hot")
    assert "prompt is empty" in (generate_completion_sync("", backend="testing").error or "")
    assert "LLM_TEMPERATURE='hot'" in (generate_completion_sync("Hi", backend="testing").error or "")
    monkeypatch.delenv("LLM_TEMPERATURE")
    monkeypatch.setattr(settings, "max_retries", None)  # (the suite sets 0 in code, which beats the variable)
    monkeypatch.setenv("LLM_MAX_RETRIES", "lots")
    response = generate_completion_sync("Hi", backend="testing", fallbacks=["nosuch"])
    assert response.error_kind is ErrorKind.CONFIG and "LLM_MAX_RETRIES='lots'" in (response.error or "")


def test_settings_errors_keep_their_order_when_no_option_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call with no keyword option skips the step that takes them, and still reads the settings
    in its order: a bad LLM_MAX_RETRIES is reported before a bad LLM_FALLBACK_ON; fallbacks and
    fallback kinds configured in the environment alone are still taken and checked."""
    monkeypatch.setattr(settings, "max_retries", None)  # (the suite sets 0 in code)
    monkeypatch.setenv("LLM_MAX_RETRIES", "lots")
    monkeypatch.setenv("LLM_FALLBACK_ON", "a,,b")  # not valid when read
    assert "LLM_MAX_RETRIES='lots'" in (generate_completion_sync("Hi", backend="testing").error or "")
    monkeypatch.setenv("LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("LLM_FALLBACK_ON", "bogus")  # read, and refused when taken
    assert "fallback_on takes" in (generate_completion_sync("Hi", backend="testing").error or "")
    monkeypatch.delenv("LLM_FALLBACK_ON")
    monkeypatch.setenv("LLM_FALLBACKS", "nosuch")
    error = generate_completion_sync("Hi", backend="testing").error or ""
    assert "fallback 'nosuch' names no installed backend" in error


def test_env_reads_each_new_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """``env()`` reads a variable again at each call, stripped; blank is ``""``, unset ``None``."""
    from chatplug._core import settings as _config

    for i in range(3):
        monkeypatch.setenv("CHATPLUG_TEST_VALUE", f" value {i} \n")
        assert _config.env("CHATPLUG_TEST_VALUE") == f"value {i}"
    monkeypatch.setenv("CHATPLUG_TEST_VALUE", " caf\u00e9 ")  # non-ASCII: decoded as os.environ decodes it
    assert _config.env("CHATPLUG_TEST_VALUE") == "caf\u00e9"
    monkeypatch.setenv("CHATPLUG_TEST_VALUE", "  ")
    assert _config.env("CHATPLUG_TEST_VALUE") == ""
    monkeypatch.delenv("CHATPLUG_TEST_VALUE")
    assert _config.env("CHATPLUG_TEST_VALUE") is None


class RenamedEnviron(os._Environ[str]):
    """``os.environ`` as a later Python might make it: the same class, its dict under another name
    (``_vars``, not ``_data``). Changes stay in it: nothing is passed to ``putenv``."""

    def __init__(self, values: dict[str, str]) -> None:
        real = os.environ
        super().__init__({}, real.encodekey, real.decodekey, real.encodevalue, real.decodevalue)
        self._vars: dict[Any, Any] = self.__dict__.pop("_data")
        for name, value in values.items():
            self[name] = value

    def __getitem__(self, name: str) -> str:
        try:
            return self.decodevalue(self._vars[self.encodekey(name)])
        except KeyError:
            raise KeyError(name) from None

    def __setitem__(self, name: str, value: str) -> None:
        self._vars[self.encodekey(name)] = self.encodevalue(value)

    def __delitem__(self, name: str) -> None:
        try:
            del self._vars[self.encodekey(name)]
        except KeyError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter([self.decodekey(key) for key in self._vars])

    def __len__(self) -> int:
        return len(self._vars)


def test_the_environment_is_read_through_the_public_mapping_when_its_own_dict_is_gone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """chatplug reads variables through ``os.environ._data``, a private attribute (a speed-up):
    where it is renamed, it reads the public mapping, logs one warning, and calls work as before."""
    from chatplug._core import internals as _internals
    from chatplug._core import settings as _config
    from chatplug.testing import scripted

    _internals.forget()
    caplog.set_level(logging.WARNING, logger="chatplug")
    renamed = RenamedEnviron({**os.environ, "LLM_TIMEOUT": "7", "CHATPLUG_TEST_VALUE": " x "})
    monkeypatch.setattr(os, "environ", renamed)
    assert _config.env("CHATPLUG_TEST_VALUE") == "x" and _config.env("CHATPLUG_TEST_UNSET") is None
    assert settings.snapshot().timeout == 7
    renamed["LLM_TIMEOUT"] = "9"
    assert settings.snapshot().timeout == 9
    with scripted() as fake:
        response = generate_completion_sync("Hi")
        assert response.success, response.error
        assert fake.requests[-1].timeout == 9
    said = [record.getMessage() for record in caplog.records if "is off" in record.getMessage()]
    assert len(said) == 1 and "os.environ" in said[0], said
    monkeypatch.undo()  # the real os.environ: read through its own dict again
    assert _config.env("CHATPLUG_TEST_VALUE") is None and settings.snapshot().timeout != 9
    assert _config._raw.data is not None and _config._raw.environ is os.environ


def test_a_mapping_in_place_of_os_environ_is_read_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from chatplug._core import internals as _internals
    from chatplug._core import settings as _config

    _internals.forget()
    monkeypatch.setattr(os, "environ", {**os.environ, "CHATPLUG_TEST_VALUE": " y "})
    assert _config.env("CHATPLUG_TEST_VALUE") == "y"
    assert not [record for record in caplog.records if "is off" in record.getMessage()]


def test_a_requests_options_are_read_only_with_or_without_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatplug.testing import scripted

    monkeypatch.setenv("LLM_FALLBACK_ON", "auth")  # the option-taking step runs, and finds no options
    with scripted() as fake:
        for options in ({}, {"timeout": 5}, {"seed": 1}):
            assert generate_completion_sync("Hi", **options).success
            with pytest.raises(TypeError):
                fake.requests[-1].options["seed"] = 2  # type: ignore[index]


def test_chat_result_init_takes_its_fields_with_their_defaults() -> None:
    """``ChatResult.__init__`` is written out for speed: its parameters are the fields, in order,
    with the fields' defaults."""
    import inspect

    parameters = list(inspect.signature(chatplug.ChatResult).parameters.values())
    fields = dataclasses.fields(chatplug.ChatResult)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]


def test_defaults_come_from_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    generate_completion_sync("Hi")
    monkeypatch.setenv("LLM_MODEL_NAME", "qwen2.5:0.5b")
    monkeypatch.setenv("LLM_TEMPERATURE", "0.1")
    monkeypatch.setenv("LLM_MAX_TOKENS", "42")
    generate_completion_sync("Hi")
    first, second = sent(ollama, 0), sent(ollama, 1)
    assert (first["model"], first["options"]["temperature"], first["options"]["num_predict"]) == ("llama3.2", 0.7, 500)
    assert (second["model"], second["options"]["temperature"], second["options"]["num_predict"]) == (
        "qwen2.5:0.5b",
        0.1,
        42,
    )


def test_arguments_beat_settings_beat_environment(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    monkeypatch.setenv("LLM_TEMPERATURE", "0.1")
    settings.temperature = 0.5
    generate_completion_sync("Hi")
    generate_completion_sync("Hi", temperature=1.5)
    settings.temperature = None
    generate_completion_sync("Hi")
    assert [sent(ollama, i)["options"]["temperature"] for i in range(3)] == [0.5, 1.5, 0.1]


@pytest.mark.parametrize(
    ("model_name", "expected_model"),
    [
        ("llama3.2:1b", "llama3.2:1b"),
        ("ollama:llama3.2:1b", "llama3.2:1b"),
        ("ollama:qwen", "qwen"),
        ("hf.co/org/model:Q4_K_M", "hf.co/org/model:Q4_K_M"),
    ],
)
def test_model_prefix_only_when_it_names_a_backend(ollama: FakeServer, model_name: str, expected_model: str) -> None:
    response = generate_completion_sync("Hi", model_name)
    assert response.backend == "ollama"
    assert sent(ollama)["model"] == expected_model


def test_backend_precedence(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer) -> None:
    monkeypatch.setenv("LLM_BACKEND", "nope")
    assert generate_completion_sync("Hi").error_kind is ErrorKind.CONFIG  # env is used ...
    assert generate_completion_sync("Hi", "ollama:llama3.2").success  # ... a prefix beats it ...
    assert generate_completion_sync("Hi", backend="ollama").success  # ... and so does backend=
    monkeypatch.setenv("LLM_MODEL_NAME", "ollama:phi3")
    assert generate_completion_sync("Hi").success  # a prefix in LLM_MODEL_NAME counts too
    assert sent(ollama)["model"] == "phi3"


def test_unknown_backend_lists_the_installed_ones() -> None:
    response = generate_completion_sync("Hi", backend="nope")
    assert response.error_kind is ErrorKind.CONFIG
    assert "'nope'" in (response.error or "") and "ollama" in (response.error or "")
    with pytest.raises(chatplug.UnknownBackendError):
        response.raise_for_error()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LLM_TEMPERATURE", "hot"),
        ("LLM_TEMPERATURE", "3"),
        ("LLM_MAX_TOKENS", "lots"),
        ("LLM_MAX_TOKENS", "0"),
        ("LLM_TIMEOUT", "-1"),
        ("LLM_TIMEOUT", "inf"),
    ],
)
def test_malformed_environment_value(monkeypatch: pytest.MonkeyPatch, ollama: FakeServer, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    response = generate_completion_sync("Hi")
    assert not response.success
    assert response.error_kind is ErrorKind.CONFIG
    assert var in (response.error or "") and repr(value) in (response.error or "")
    assert ollama.requests == []


def test_settings_reject_bad_values_in_code() -> None:
    with pytest.raises(chatplug.ConfigError, match="temperature"):
        settings.temperature = 9
    assert "temperature=0.7" in repr(settings)


VALID = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ("Hi", "must be a list"),
        ({"role": "user", "content": "Hi"}, "must be a list"),
        ([], "empty"),
        (["Hi"], "messages[0] must be a dict"),
        ([{"content": "Hi"}], "messages[0] has no 'role'"),
        ([{"role": "user"}], "messages[0] has no 'content'"),
        ([*VALID, {"role": "tool", "content": "42"}], "messages[1] is a tool result without a 'tool_call_id'"),
        ([{"role": "user", "content": [{"type": "video", "url": "x"}]}], "messages[0].content[0] must be"),
        ([{"role": "user", "content": None}], "must be a string or a list of parts"),
        ([{"role": "user", "content": "Hi", "images": ["..."]}], "unsupported key(s) 'images'"),
    ],
)
def test_invalid_messages(ollama: FakeServer, messages: Any, words: str) -> None:
    response = generate_completion_with_messages_sync(messages)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert words in (response.error or "")
    assert ollama.requests == []


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": None}, "prompt must be a string"),
        ({"temperature": 2.5}, "temperature must be a number from 0 to 2"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": 0}, "max_tokens must be a whole number from 1 to 2147483647"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model_name": ""}, "model_name"),
        ({"backend": 3}, "backend"),
    ],
)
def test_invalid_arguments(ollama: FakeServer, kwargs: dict[str, Any], words: str) -> None:
    call = {"prompt": "Hi", **kwargs}
    response = generate_completion_sync(call.pop("prompt"), **call)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert words in (response.error or "")
    assert response.response_time >= 0 and response.success is False
    assert ollama.requests == []
    with pytest.raises(chatplug.InvalidInputError):
        response.raise_for_error()
    with pytest.raises(ValueError):  # InvalidInputError is a ValueError too
        response.raise_for_error()


def test_async_invalid_input() -> None:
    response = asyncio.run(chatplug.generate_completion_with_messages_async("not a list"))  # type: ignore[arg-type]
    assert response.error_kind is ErrorKind.INVALID_INPUT


def test_boundary_values_are_accepted(ollama: FakeServer) -> None:
    assert generate_completion_sync("Hi", temperature=0).success
    assert generate_completion_sync("Hi", temperature=2, max_tokens=1).success
    assert [sent(ollama, i)["options"]["temperature"] for i in range(2)] == [0, 2]


# -- options, numbers and names the caller may get wrong ---------------------------------


@pytest.mark.parametrize("option", ["model", "messages", "stream", "options"])
def test_options_chatplug_decides_are_refused_for_every_backend(ollama: FakeServer, option: str) -> None:
    response = generate_completion_sync("Hi", **{option: "x"})
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert response.error is not None and response.error.startswith(f"ollama: option {option!r} is chatplug's own")
    assert ollama.requests == []


@pytest.mark.parametrize("value", [object(), float("nan"), {"a": {1, 2}}])
def test_options_that_are_not_json_are_refused_before_sending(ollama: FakeServer, value: object) -> None:
    response = generate_completion_sync("Hi", seed=value)
    assert response.error_kind is ErrorKind.INVALID_INPUT
    assert "option 'seed' must be JSON data" in (response.error or "")
    assert ollama.requests == []


def test_any_real_number_is_a_temperature(ollama: FakeServer) -> None:
    from decimal import Decimal
    from fractions import Fraction

    for value in (Decimal("0.5"), Fraction(1, 2)):
        assert generate_completion_sync("Hi", temperature=value).success  # type: ignore[arg-type]
        assert sent(ollama)["options"]["temperature"] == 0.5
    too_big = generate_completion_sync("Hi", temperature=10**400)
    assert too_big.error_kind is ErrorKind.INVALID_INPUT and "from 0 to 2" in (too_big.error or "")


def test_a_failed_call_reports_the_model_it_was_asked_for() -> None:
    response = generate_completion_sync("", "some-model")
    assert (response.error_kind, response.model_used) == (ErrorKind.INVALID_INPUT, "some-model")


def test_model_names_are_trimmed_and_a_bare_prefix_is_refused(ollama: FakeServer) -> None:
    assert generate_completion_sync("Hi", "  phi3 ").success
    assert sent(ollama)["model"] == "phi3"
    bare = generate_completion_sync("Hi", "ollama:")
    assert bare.error_kind is ErrorKind.INVALID_INPUT and "'ollama:MODEL'" in (bare.error or "")
    contradiction = generate_completion_sync("Hi", "openai:gpt-4o", backend="ollama")
    assert contradiction.error_kind is ErrorKind.INVALID_INPUT and "contradicts" in (contradiction.error or "")
    assert len(ollama.requests) == 1


def test_a_prefix_from_the_environment_does_not_beat_a_backend_set_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripted()`` sets ``settings.backend``: an operator's ``LLM_MODEL_NAME=openai:...``
    must not send a unit test's calls to a real provider."""
    from chatplug.testing import scripted

    monkeypatch.setenv("LLM_MODEL_NAME", "openai:gpt-4o-mini")
    with scripted("from the script") as llm:
        response = generate_completion_sync("Hi")
    assert (response.backend, response.content) == ("testing", "from the script")
    assert llm.requests[0].model == "testing"  # a model meant for openai is not sent to another backend
    monkeypatch.setenv("LLM_BACKEND", "ollama")  # at the same level, the prefix wins
    assert generate_completion_sync("Hi").backend == "openai"


def test_the_first_async_call_makes_its_backend_off_the_event_loop() -> None:
    """Making a backend imports its SDK (~0.4 s): on the loop it would stall every other task."""
    import threading

    from chatplug import ChatBackend, ChatRequest, ChatResult, hookimpl

    made_in: list[threading.Thread] = []

    class Recording(ChatBackend):
        default_model = "m"

        def __init__(self) -> None:
            made_in.append(threading.current_thread())

        def complete(self, request: ChatRequest) -> ChatResult:
            return ChatResult(content="ok", model=request.model)

        async def acomplete(self, request: ChatRequest) -> ChatResult:
            return self.complete(request)

    class Plugin:
        @hookimpl
        def register_backends(self, register: Any) -> None:
            register("made-off-loop", Recording)

    chatplug.register_plugin(Plugin(), "made-off-loop-plugin")
    try:

        async def twice() -> list[LLMResponse]:
            return [await chatplug.generate_completion_async("Hi", backend="made-off-loop") for _ in range(2)]

        assert all(r.success for r in asyncio.run(twice()))
        assert len(made_in) == 1 and made_in[0] is not threading.main_thread()
    finally:
        chatplug.unregister_plugin("made-off-loop-plugin")
