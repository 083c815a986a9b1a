"""chatplug.testing, the backend for users' own tests: scripted replies and failures, recorded
requests, selection from the environment, settings restored, sync, async and threads."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import chatplug
import chatplug.testing
from chatplug import (
    APITimeoutError,
    AuthenticationError,
    ChatplugError,
    ChatRequest,
    ChatResult,
    ContextLengthExceededError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_sync,
    settings,
)
from chatplug.testing import FakeLLM, scripted
from chatplug.toolkit import thaw

from .childproc import clean_env, run_pytest

llm = pytest.fixture(chatplug.testing.fake_llm)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_llm_backend_testing_needs_no_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKEND", "testing")
    before = len(chatplug.testing.current().requests)
    response = generate_completion_with_messages_sync(
        [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello there"}]
    )
    assert response.success, response.error
    assert (response.content, response.backend, response.model_used) == ("hello there", "testing", "testing")
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (4, 2, 6)
    assert chatplug.testing.current().prompts[before:] == ["hello there"]


def test_llm_backend_testing_from_a_shell() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chatplug", "--system", "ignored", "echo me"],
        capture_output=True,
        text=True,
        env=clean_env(LLM_BACKEND="testing"),
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, "echo me\n"), proc.stderr


def test_scripted_replies_in_order_then_the_default() -> None:
    with scripted("first", "second") as fake:
        assert fake.pending == 2
        assert generate_completion_sync("a").content == "first"
        assert generate_completion_sync("b").content == "second"
        assert fake.pending == 0
        assert generate_completion_sync("c d").content == "c d"  # used up: echo
        fake.script("third")
        assert generate_completion_sync("e").content == "third"
    assert fake.prompts == ["a", "b", "c d", "e"]


def test_scripted_chat_result_is_passed_through() -> None:
    result = ChatResult("cut sh", model="big-model", prompt_tokens=100, completion_tokens=7, finish_reason="length")
    with scripted(result):
        response = generate_completion_sync("hi", "small-model")
    assert (response.content, response.model_used, response.finish_reason) == ("cut sh", "big-model", "length")
    assert (response.prompt_tokens, response.completion_tokens, response.tokens_used) == (100, 7, 107)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RateLimitError("slow down", retry_after=2), "rate_limit"),
        (APITimeoutError("no answer in 1 s"), "timeout"),
        (NotFoundError("model 'x' not found", status_code=404), "not_found"),
        (AuthenticationError("bad key"), "auth"),
        (ContextLengthExceededError("too long"), "context_length"),
        (OverloadedError("busy"), "overloaded"),
        (chatplug.ConfigError("no key configured"), "config"),
    ],
)
def test_scripted_failures_become_failed_responses(error: ChatplugError, kind: str) -> None:
    with scripted(error, "recovered") as fake:
        failed = generate_completion_sync("hi")
        ok = generate_completion_sync("hi")
    assert (failed.success, failed.content, failed.error_kind) == (False, "", kind)
    assert failed.error == f"testing: {error.message}"
    assert failed.exception is error
    assert failed.retry_after == error.retry_after
    with pytest.raises(type(error)):
        failed.raise_for_error()
    assert ok.success and ok.content == "recovered"
    assert len(fake.requests) == 2  # the failed one is recorded too


def test_rate_limit_retry_after_reaches_the_caller() -> None:
    with scripted(RateLimitError("slow down", retry_after=2)):
        response = generate_completion_sync("hi")
    assert (response.error_kind, response.retry_after) == ("rate_limit", 2)


def test_a_failure_used_many_times_does_not_grow() -> None:
    error = OverloadedError("busy")
    with scripted(default=error):
        depths = []
        for _ in range(5):
            assert generate_completion_sync("hi").exception is error
            depth, tb = 0, error.__traceback__
            while tb is not None:
                depth, tb = depth + 1, tb.tb_next
            depths.append(depth)
    assert len(set(depths)) == 1, depths


def test_reply_functions_see_the_request() -> None:
    def reply(request: ChatRequest) -> str | ChatplugError:
        if "weather" in request.messages[-1]["content"]:
            return NotFoundError("no weather tool")
        return f"{request.model} at {request.temperature}"

    with scripted(default=reply):
        assert generate_completion_sync("hi", "m1", 0.2).content == "m1 at 0.2"
        assert generate_completion_sync("the weather?").error_kind == "not_found"


def test_requests_are_recorded_as_the_backend_got_them() -> None:
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "question"}]
    with scripted(AuthenticationError("no")) as fake:
        generate_completion_with_messages_sync(messages, "m", 0.1, 42, seed=7, stop=["\n"])
        generate_completion_sync("second", backend="testing")
    first, second = fake.requests
    assert first.messages == tuple(messages) and first.messages[0] is not messages[0]
    assert (first.model, first.temperature, first.max_tokens, first.backend) == ("m", 0.1, 42, "testing")
    assert thaw(first.options) == {"seed": 7, "stop": ["\n"]}
    assert (second.model, second.temperature, second.max_tokens) == ("testing", 0.7, 500)  # the defaults
    assert fake.prompts == ["question", "second"]


def test_invalid_input_never_reaches_the_backend() -> None:
    with scripted("never used") as fake:
        assert generate_completion_sync("  ").error_kind == "invalid_input"
        assert generate_completion_sync("hi", max_tokens=0).error_kind == "invalid_input"
    assert fake.requests == [] and fake.pending == 1


def test_a_reply_of_the_wrong_type_fails_where_it_is_scripted() -> None:
    with pytest.raises(TypeError, match="got 42"), scripted(42):  # type: ignore[arg-type]
        pass
    with pytest.raises(TypeError, match="got None"):
        FakeLLM().script("fine", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"script an instance, e\.g\. RateLimitError\('...'\), not the class"):
        FakeLLM(default=RateLimitError)  # type: ignore[arg-type]
    assert settings.backend == "ollama"  # the failed block selected nothing


def test_a_reply_function_returning_the_wrong_type_is_a_plugin_error() -> None:
    with scripted(lambda request: 42) as fake:  # type: ignore[arg-type,return-value]
        response = generate_completion_sync("hi")
    assert response.error_kind == "plugin" and "testing" in str(response.error)
    assert "TypeError" in str(response.error) and "returned 42" in str(response.error)
    assert fake.prompts == ["hi"]


def test_scripted_selects_the_backend_and_restores_the_override() -> None:
    settings.backend = "ollama"
    with scripted():
        assert settings.backend == "testing"
    assert settings.backend == "ollama"
    assert settings._overrides.get("backend") == "ollama"


def test_scripted_restores_no_override_so_the_environment_applies_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    with pytest.raises(RuntimeError), scripted():
        assert settings.backend == "testing"
        raise RuntimeError("the test failed inside the block")
    assert settings._overrides.get("backend") is None
    monkeypatch.setenv("LLM_BACKEND", "something-else")
    assert settings.backend == "something-else"  # read from the environment, not frozen


def test_nested_blocks() -> None:
    with scripted("outer 1", "outer 2") as outer:
        assert generate_completion_sync("a").content == "outer 1"
        with scripted("inner") as inner:
            assert chatplug.testing.current() is inner
            assert generate_completion_sync("b").content == "inner"
        assert generate_completion_sync("c").content == "outer 2"
    assert (outer.prompts, inner.prompts) == (["a", "c"], ["b"])
    assert chatplug.testing.current() is not outer


def test_async_calls_are_scripted_and_recorded() -> None:
    async def main() -> list[Any]:
        with scripted(*[f"reply {i}" for i in range(20)], RateLimitError("enough")) as fake:
            responses = await asyncio.gather(*(generate_completion_async(f"q {i}") for i in range(21)))
        return [responses, fake]

    responses, fake = asyncio.run(main())
    assert sorted(r.content for r in responses if r.success) == sorted(f"reply {i}" for i in range(20))
    assert [r.error_kind for r in responses if not r.success] == ["rate_limit"]
    assert sorted(fake.prompts) == sorted(f"q {i}" for i in range(21))


def test_threads_share_one_script_without_losing_or_repeating_a_reply() -> None:
    n = 400
    with scripted(*[str(i) for i in range(n)]) as fake, ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(lambda i: generate_completion_sync(f"q{i}").content, range(n)))
    assert sorted(contents, key=int) == [str(i) for i in range(n)]
    assert len(fake.requests) == n and fake.pending == 0


def test_the_ambient_fake_keeps_a_bounded_history() -> None:
    fake = FakeLLM(keep=3)
    for i in range(5):
        fake.answer(ChatRequest(({"role": "user", "content": str(i)},), "m", 0.0, 1, 1.0))
    assert fake.prompts == ["2", "3", "4"]


def test_the_fixture_selects_the_backend(llm: FakeLLM) -> None:
    llm.script("from the fixture")
    assert settings.backend == "testing"
    assert generate_completion_sync("hi").content == "from the fixture"
    assert llm.prompts == ["hi"]


def test_the_guides_example_passes(tmp_path: Path) -> None:
    """The plugin guide's "Testing code that uses chatplug" files, run by pytest as a user would."""
    files = dict(re.findall(r"```python\n# (\S+\.py)\n(.*?)```", GUIDE.read_text(), re.S))
    for name in ("agent.py", "test_agent.py", "conftest.py"):
        (tmp_path / name).write_text(files[name])
    assert run_pytest(tmp_path) == 2
