"""examples/ray_batch.py on a local Ray cluster on 127.0.0.1, against the fake Ollama server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fakeserver import FakeServer

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (the test extra has it)")
pytestmark = pytest.mark.slow  # a Ray cluster: on the main job's Python only in CI's matrix

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray_batch.py"


def test_every_input_gets_its_answer_from_the_ray_workers(tmp_path: Path, ollama: FakeServer) -> None:
    prompts = [f"question {i}" for i in range(23)]
    lines = [json.dumps(p) if i % 3 else json.dumps([{"role": "user", "content": p}]) for i, p in enumerate(prompts)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "RAY_"))}
    # The workers' configuration comes from the driver's environment, through runtime_env.
    env.update(OLLAMA_HOST=ollama.url, LLM_MODEL_NAME="from-the-driver", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "in.jsonl", "-o", "out.jsonl", "--chunk", "4", "--tasks", "3",
         "--concurrency", "2", "--num-cpus", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "23 inputs answered" in proc.stdout
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["index"] for o in out] == list(range(23))
    assert all(o["success"] and o["content"].startswith("Rayleigh") for o in out)
    sent = [request.json() for request in ollama.requests]
    assert sorted(body["messages"][-1]["content"] for body in sent) == sorted(prompts)  # each once
    assert {body["model"] for body in sent} == {"from-the-driver"}
