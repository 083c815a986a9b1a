"""Extended thinking with tools through the anthropic backend (issue 24): the ``thinking`` blocks
(with their ``signature``) and ``redacted_thinking`` blocks of a reply are kept, exactly as sent,
in ``response.thinking_blocks`` and ``response.message``, and go back unchanged, in order, before
the ``tool_use``, in the request that carries the tool result, as the Messages API requires.

The real anthropic SDK talks over a socket to the fake server, which answers with the recorded
thinking + tool exchange (tests/fixtures/anthropic/messages_thinking_tool_*, from
/work/shared/fixtures; see its INDEX.md). Other backends leave the blocks out.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from chatplug import (
    ErrorKind,
    LLMResponse,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
    run_tools_async,
    run_tools_sync,
    stream_completion_with_messages_async,
    stream_completion_with_messages_sync,
)

from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, REQUEST_ID, WEATHER, both

MODEL = "claude-sonnet-4-20250514"
PROMPT = "What's the weather in Tokyo?"
THINKING = {"type": "enabled", "budget_tokens": 2048}
#: The call's arguments as the recorded requests hold them.
OPTIONS: dict[str, Any] = {"model_name": MODEL, "max_tokens": 4096, "tools": [WEATHER], "thinking": THINKING}


def recorded(name: str) -> Any:
    return json.loads(fixture(f"anthropic/{name}"))


REQUEST = recorded("messages_thinking_tool_request.json")
RESULT_REQUEST = recorded("messages_thinking_tool_result_request.json")
#: The reply's thinking blocks, exactly as the recorded reply has them.
BLOCKS = [b for b in recorded("messages_thinking_tool_nonstream_200.json")["content"] if b["type"] != "tool_use"]
CALL_ID = "toolu_01D7FLrfh4GYq7yT1ULFeP00"


def thinking_reply() -> Reply:
    return ANTHROPIC.reply("messages_thinking_tool_nonstream_200.json")


def thinking_stream() -> Reply:
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "request-id": REQUEST_ID}
    return Reply(200, fixture("anthropic/messages_thinking_tool_stream_200.sse"), headers, chunked=True)


def final_reply() -> Reply:
    """The model's answer once it has the tool's result (a plain text reply)."""
    return ANTHROPIC.reply("messages_nonstream_200.json")


def check_first(response: LLMResponse) -> None:
    """The recorded reply: a tool call, its thinking as ``reasoning``, and both blocks kept as sent."""
    assert response.success, response.error
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [(CALL_ID, "get_weather", {"city": "Tokyo"})]
    assert response.reasoning == BLOCKS[0]["thinking"]
    assert response.thinking_blocks == BLOCKS
    assert response.message == {
        "role": "assistant",
        "content": "",
        "thinking_blocks": BLOCKS,
        "tool_calls": [{"id": CALL_ID, "name": "get_weather", "arguments": {"city": "Tokyo"}}],
    }
    assert response.to_dict()["thinking_blocks"] == BLOCKS


def history(first: LLMResponse) -> list[dict[str, Any]]:
    """The conversation's next step: the reply appended as it came, then the tool's result."""
    return [
        {"role": "user", "content": PROMPT},
        first.message,
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "11 degrees celsius"},
    ]


def second_steps(histories: list[list[dict[str, Any]]]) -> list[LLMResponse]:
    return [
        generate_completion_with_messages_sync(histories[0], **OPTIONS),
        asyncio.run(generate_completion_with_messages_async(histories[1], **OPTIONS)),
    ]


def test_the_thinking_blocks_of_a_reply_go_back_with_the_tool_result(anthropic_server: FakeServer) -> None:
    ANTHROPIC.route(anthropic_server, thinking_reply(), thinking_reply(), final_reply())
    firsts = both([{"role": "user", "content": PROMPT}], **OPTIONS)
    for first in firsts:
        check_first(first)
    histories = [history(first) for first in firsts]
    kept = copy.deepcopy(histories)
    assert all(response.success for response in second_steps(histories))
    assert histories == kept  # nothing the caller passed is changed
    bodies = [request.json() for request in anthropic_server.requests]
    assert bodies == [REQUEST, REQUEST, RESULT_REQUEST, RESULT_REQUEST]


def test_a_streamed_replys_thinking_blocks_go_back_with_the_tool_result(anthropic_server: FakeServer) -> None:
    ANTHROPIC.route(anthropic_server, thinking_stream(), thinking_stream(), final_reply())
    messages = [{"role": "user", "content": PROMPT}]
    with stream_completion_with_messages_sync(messages, **OPTIONS) as stream:
        chunks = list(stream)

    async def astreamed() -> LLMResponse:
        async with stream_completion_with_messages_async(messages, **OPTIONS) as astream:
            assert "".join([chunk.reasoning async for chunk in astream]) == BLOCKS[0]["thinking"]
        return astream.response

    firsts = [stream.response, asyncio.run(astreamed())]
    assert "".join(chunk.reasoning for chunk in chunks) == BLOCKS[0]["thinking"]  # the thinking still streams
    for first in firsts:
        check_first(first)
    assert all(response.success for response in second_steps([history(first) for first in firsts]))
    bodies = [request.json() for request in anthropic_server.requests]
    assert bodies == [{**REQUEST, "stream": True}] * 2 + [RESULT_REQUEST] * 2


def test_a_stream_cut_off_inside_a_thinking_block_keeps_no_half_block(anthropic_server: FakeServer) -> None:
    """A block is reported at its ``content_block_stop``: one that never ends (its signature may
    be missing) is not kept, while the whole blocks before it are."""
    events = fixture("anthropic/messages_thinking_tool_stream_200.sse").split(b"\n\n")
    # Up to the redacted block's start: the thinking block ended, the redacted one did not.
    cut = b"\n\n".join(events[:7]) + b"\n\n"
    assert b"redacted_thinking" in events[6] and b"content_block_stop" not in events[6]
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "request-id": REQUEST_ID}
    ANTHROPIC.route(anthropic_server, Reply(200, cut, headers, chunked=True))
    with stream_completion_with_messages_sync([{"role": "user", "content": PROMPT}], **OPTIONS) as stream:
        list(stream)
    assert not stream.response.success and stream.response.error_kind is ErrorKind.SERVER  # no finish reason came
    assert stream.response.thinking_blocks == BLOCKS[:1]


def get_weather(city: str) -> str:
    return "11 degrees celsius"


def test_run_tools_sends_the_thinking_blocks_back(anthropic_server: FakeServer) -> None:
    """``run_tools_*`` transcripts are made of ``response.message``: step 2 carries the blocks."""
    ANTHROPIC.route(anthropic_server, thinking_reply(), final_reply(), thinking_reply(), final_reply())
    options = {key: value for key, value in OPTIONS.items() if key != "tools"}
    runs = [
        run_tools_sync(PROMPT, [get_weather], **options),
        asyncio.run(run_tools_async(PROMPT, [get_weather], **options)),
    ]
    for run in runs:
        assert run.complete and run.steps == 2, run.response.error
        assert run.messages[1]["thinking_blocks"] == BLOCKS
    bodies = [request.json() for request in anthropic_server.requests]
    assert [body["messages"] for body in bodies] == [REQUEST["messages"], RESULT_REQUEST["messages"]] * 2


def test_a_cached_reply_keeps_its_thinking_blocks(
    anthropic_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response cache stores the blocks with the reply: a hit (whole or streamed) gives them back."""
    monkeypatch.setenv("LLM_CACHE", str(tmp_path / "responses.db"))
    ANTHROPIC.route(anthropic_server, thinking_reply())
    messages = [{"role": "user", "content": PROMPT}]
    first = generate_completion_with_messages_sync(messages, **OPTIONS)
    again = generate_completion_with_messages_sync(messages, **OPTIONS)
    with stream_completion_with_messages_sync(messages, **OPTIONS) as stream:
        list(stream)
    assert len(anthropic_server.requests) == 1
    for response in (first, again, stream.response):
        check_first(response)
    assert again.cached and stream.response.cached


# -- what a caller passes: checked before sending, and left out by the other backends --------

BAD_BLOCKS: list[tuple[Any, str]] = [
    ("not a list", "thinking_blocks must be a list"),
    ([{"type": "thinking", "thinking": "hmm"}], "thinking_blocks[0] must be"),  # its signature lost
    ([BLOCKS[0], {"type": "redacted_thinking"}], "thinking_blocks[1] must be"),
    ([{"type": "text", "text": "hmm"}], "thinking_blocks[0] must be"),
    (["hmm"], "thinking_blocks[0] must be"),
    ([{**BLOCKS[0], "extra": float("nan")}], "must be JSON data"),
]


@pytest.mark.parametrize(("blocks", "said"), BAD_BLOCKS)
def test_malformed_thinking_blocks_are_invalid_input(anthropic_server: FakeServer, blocks: Any, said: str) -> None:
    messages = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "", "thinking_blocks": blocks,
         "tool_calls": [{"id": CALL_ID, "name": "get_weather", "arguments": {"city": "Tokyo"}}]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "11 degrees celsius"},
    ]  # fmt: skip
    for response in both(messages, **OPTIONS):
        assert response.error_kind is ErrorKind.INVALID_INPUT, response.error
        assert "messages[1]" in (response.error or "") and said in (response.error or "")
    assert anthropic_server.requests == []


def test_an_assistant_turn_without_tools_sends_its_blocks_before_its_text(anthropic_server: FakeServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "thinking_blocks": BLOCKS},
        {"role": "user", "content": "Again?"},
    ]
    assert generate_completion_with_messages_sync(messages, **OPTIONS).success
    assert anthropic_server.requests[0].json()["messages"][1] == {
        "role": "assistant", "content": [*BLOCKS, {"type": "text", "text": "Hello."}],
    }  # fmt: skip


def transcripts() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A tool step with the thinking blocks, and the same without them."""
    calls = [{"id": CALL_ID, "name": "get_weather", "arguments": {"city": "Tokyo"}}]
    plain: list[dict[str, Any]] = [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "Checking.", "tool_calls": calls},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "11 degrees celsius"},
        {"role": "assistant", "content": "It is 11 degrees."},
        {"role": "user", "content": "Thanks."},
    ]
    thinking = copy.deepcopy(plain)
    thinking[1]["thinking_blocks"] = thinking[3]["thinking_blocks"] = BLOCKS
    return thinking, plain


def test_openai_leaves_the_thinking_blocks_out(openai_server: FakeServer) -> None:
    thinking, plain = transcripts()
    assert all(r.success for r in both(thinking, tools=[WEATHER]) + both(plain, tools=[WEATHER]))
    bodies = [request.json() for request in openai_server.requests]
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    assert "thinking_blocks" not in json.dumps(bodies[0])


def test_ollama_leaves_the_thinking_blocks_out(ollama: FakeServer) -> None:
    thinking, plain = transcripts()
    assert all(r.success for r in both(thinking, tools=[WEATHER]) + both(plain, tools=[WEATHER]))
    bodies = [request.json() for request in ollama.requests]
    assert bodies[0] == bodies[1] == bodies[2] == bodies[3]
    assert "thinking_blocks" not in json.dumps(bodies[0])


def test_a_record_stored_before_thinking_blocks_were_kept_is_a_miss_when_it_needs_them() -> None:
    """An older record of a reply with thinking and tool calls has lost its blocks: answering from
    it would make the tool loop's next request one Anthropic refuses. Any other older record is read."""
    from chatplug._pipeline.cache import VERSION, result

    older = {
        "v": VERSION, "content": "", "model": MODEL, "prompt_tokens": 1, "completion_tokens": 2,
        "finish_reason": "tool_calls", "reasoning": "hmm",
        "tool_calls": [{"id": CALL_ID, "name": "get_weather", "arguments": {"city": "Tokyo"}}],
    }  # fmt: skip
    assert result(json.dumps(older).encode()) is None
    kept: dict[str, Any]
    for kept in ({"reasoning": ""}, {"tool_calls": []}):
        read = result(json.dumps({**older, **kept}).encode())
        assert read is not None and read.thinking_blocks == ()
