"""The command line, run as users run it: a subprocess against a fake Ollama server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .fakeserver import FakeServer


def chatplug(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "chatplug", *args], capture_output=True, text=True, env=environ, timeout=60
    )


def test_prompt_prints_the_content(ollama: FakeServer) -> None:
    proc = chatplug("Why is the sky blue?", OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Rayleigh scattering")


def test_options_reach_the_request(ollama: FakeServer) -> None:
    proc = chatplug(
        "Hi",
        "--system",
        "Be brief.",
        "--model",
        "ollama:phi3",
        "--temperature",
        "0",
        "--max-tokens",
        "9",
        OLLAMA_HOST=ollama.url,
    )
    assert proc.returncode == 0, proc.stderr
    body = ollama.requests[0].json()
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (body["model"], body["options"]["temperature"], body["options"]["num_predict"]) == ("phi3", 0, 9)


def test_json_output(ollama: FakeServer) -> None:
    proc = chatplug("--json", "Hi", OLLAMA_HOST=ollama.url)
    data = json.loads(proc.stdout)
    assert data["success"] is True and data["tokens_used"] == 50 and data["backend"] == "ollama"
    assert list(data)[:6] == ["content", "tokens_used", "response_time", "model_used", "success", "error"]


def test_failure_exits_non_zero_with_the_error_on_stderr(closed_port: int) -> None:
    proc = chatplug("Hi", OLLAMA_HOST=f"127.0.0.1:{closed_port}")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "ollama serve" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_backend(ollama: FakeServer) -> None:
    proc = chatplug("--backend", "nope", "Hi")
    assert proc.returncode == 1 and "Installed backends:" in proc.stderr


def test_backends_lists_the_built_ins() -> None:
    proc = chatplug("backends")
    assert proc.returncode == 0
    rows = dict(line.split() for line in proc.stdout.splitlines())
    assert rows["ollama"] == "chatplug"


def test_backends_as_json() -> None:
    proc = chatplug("backends", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert {"ollama", "openai", "anthropic", "testing"} <= set(rows)
    assert rows["openai"] == {"name": "openai", "plugin": "openai", "distribution": "chatplug"}


def test_the_word_backends_can_still_be_asked(ollama: FakeServer) -> None:
    proc = chatplug("--", "backends", OLLAMA_HOST=ollama.url)
    assert proc.returncode == 0, proc.stderr
    assert ollama.requests[0].json()["messages"] == [{"role": "user", "content": "backends"}]


def test_a_usage_error_exits_2() -> None:
    proc = chatplug("--temperature", "hot", "Hi")
    assert proc.returncode == 2 and "invalid float value" in proc.stderr


def test_version() -> None:
    proc = chatplug("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("chatplug ") and proc.stdout.strip()[-1].isdigit()


def test_bad_numbers_are_usage_errors() -> None:
    for args in (("--temperature", "abc"), ("--max-tokens", "-3"), ("--max-tokens", "x")):
        proc = chatplug(*args, "Hi")
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage:" in proc.stderr


def test_library_warnings_reach_stderr_prefixed_once() -> None:
    proc = chatplug("--backend", "testing", "Hi", CHATPLUG_PLUGINS="nope")
    assert proc.returncode == 0, proc.stderr
    assert "CHATPLUG_PLUGINS=nope" in proc.stderr
    assert "chatplug: chatplug" not in proc.stderr


def test_a_failure_is_reported_once_with_one_prefix(closed_port: int) -> None:
    proc = chatplug("Hi", OLLAMA_HOST=f"127.0.0.1:{closed_port}")
    assert proc.returncode == 1
    assert proc.stderr.count("could not connect") == 1 and "chatplug: chatplug" not in proc.stderr
    assert "--backend local" in proc.stderr


def test_backends_json_ends_with_a_newline() -> None:
    assert chatplug("backends", "--json").stdout.endswith("]\n")


def _thinking_stream() -> bytes:
    def line(content: str, thinking: str = "", done: bool = False) -> bytes:
        message = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking else {})}
        body = {"model": "qwen3", "created_at": "2026-11-29T00:00:00Z", "message": message, "done": done}
        if done:
            body |= {"done_reason": "stop", "prompt_eval_count": 5, "eval_count": 4}
        return json.dumps(body).encode() + b"\n"

    return line("", "The user asks. ") + line("", "Answer briefly.") + line("Par") + line("is.") + line("", done=True)


def test_the_reply_streams_with_reasoning_on_stderr(ollama: FakeServer) -> None:
    from .fakeserver import Reply

    stream = Reply(200, _thinking_stream(), {"Content-Type": "application/x-ndjson"}, chunked=True)
    whole = {"model": "qwen3", "created_at": "2026-11-29T00:00:00Z", "done": True, "done_reason": "stop",
             "message": {"role": "assistant", "content": "Paris.", "thinking": "The user asks. Answer briefly."},
             "prompt_eval_count": 5, "eval_count": 4}  # fmt: skip
    reply = Reply(200, json.dumps(whole).encode(), {"Content-Type": "application/json; charset=utf-8"})
    ollama.route("POST", "/api/chat", stream, reply, reply)
    streamed = chatplug("Capital of France?", OLLAMA_HOST=ollama.url)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == "Paris.\n"
    assert streamed.stderr == "The user asks. Answer briefly."  # reasoning apart, undimmed when not a terminal
    assert ollama.requests[0].json()["stream"] is True
    waited = chatplug("Capital of France?", "--no-stream", OLLAMA_HOST=ollama.url)
    assert (waited.stdout, waited.stderr) == ("Paris.\n", "The user asks. Answer briefly.\n")
    as_json = json.loads(chatplug("Capital of France?", "--json", OLLAMA_HOST=ollama.url).stdout)
    assert (as_json["content"], as_json["reasoning"], as_json["tokens_used"]) == (
        "Paris.",
        "The user asks. Answer briefly.",
        9,
    )


def test_a_stream_that_fails_midway_keeps_what_was_printed(ollama: FakeServer) -> None:
    from .fakeserver import Reply, fixture

    ollama.route(
        "POST",
        "/api/chat",
        Reply(
            200, fixture("ollama/error_midstream_200.ndjson"), {"Content-Type": "application/x-ndjson"}, chunked=True
        ),
    )
    proc = chatplug("Hi", OLLAMA_HOST=ollama.url)
    assert proc.returncode == 1
    assert proc.stdout.strip() and proc.stdout.endswith("\n")  # the text that came, on its own line
    assert proc.stderr.startswith("chatplug: ollama:") and proc.stderr.count("\n") == 1
