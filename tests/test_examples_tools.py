"""The tools and structured-output examples run as users run them, against the fake Ollama server
answering in Ollama's own wire format."""

from __future__ import annotations

import json

from .conftest import OLLAMA_JSON
from .fakeserver import FakeServer, Reply, fixture
from .test_examples import run_example


def reply(content: str) -> Reply:
    body = json.loads(fixture("ollama/chat_nonstream_200.json"))
    body["message"]["content"] = content
    return Reply(200, json.dumps(body).encode(), dict(OLLAMA_JSON))


def test_the_tools_agent_runs_the_tool_and_answers(ollama: FakeServer) -> None:
    ollama.route(
        "POST",
        "/api/chat",
        Reply(200, fixture("ollama/chat_tool_nonstream_200.json"), dict(OLLAMA_JSON)),
        reply("It is 11 degrees and clear in Tokyo."),
    )
    out = run_example("tools_agent.py", ollama, "What is the weather in Tokyo?")
    assert "model calls get_weather({'city': 'Tokyo'})" in out
    assert "tool get_weather -> 11 degrees and clear" in out
    assert "It is 11 degrees and clear in Tokyo." in out and "(2 model calls, complete=True)" in out
    first, second = (request.json() for request in ollama.requests)
    assert [tool["function"]["name"] for tool in first["tools"]] == ["get_weather", "convert_temperature"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool"]
    assert second["messages"][2]["content"] == "11 degrees and clear"


def test_the_structured_output_example_prints_the_parsed_object(ollama: FakeServer) -> None:
    answer = {"name": "France", "capital": "Paris", "languages": ["French"]}
    ollama.route("POST", "/api/chat", reply(json.dumps(answer)))
    out = run_example("structured_output.py", ollama, "France")
    assert out.strip() == "France: capital Paris; languages French"
    schema = ollama.requests[0].json()["format"]
    assert schema["required"] == ["name", "capital", "languages"]
