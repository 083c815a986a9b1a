"""The examples run as users run them, against the fake Ollama server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .fakeserver import FakeServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, server: FakeServer, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env["OLLAMA_HOST"] = server.url
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart(ollama: FakeServer) -> None:
    out = run_example("quickstart.py", ollama)
    for label in ("sync prompt", "sync messages", "async prompt", "async messages"):
        assert f"{label}: 'Rayleigh scattering" in out
    assert len(ollama.requests) == 4
    assert ollama.requests[1].json()["messages"][0]["role"] == "system"


def test_agent_keeps_its_history(ollama: FakeServer) -> None:
    out = run_example("agent.py", ollama, "first question", "second question")
    assert "(4 messages in history, 100 tokens used)" in out
    second = ollama.requests[1].json()["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1]["content"] == "first question" and second[3]["content"] == "second question"


def test_the_examples_exit_non_zero_when_their_calls_fail(closed_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    env["OLLAMA_HOST"] = f"127.0.0.1:{closed_port}"
    for name in ("quickstart.py", "agent.py"):
        proc = subprocess.run([sys.executable, str(EXAMPLES / name), *(["hi"] if name == "agent.py" else [])],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1, (name, proc.stdout, proc.stderr)
        assert "ollama serve" in proc.stdout + proc.stderr
