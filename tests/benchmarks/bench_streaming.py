"""Streaming benchmarks, outside the default test run:

    .venv/bin/python tests/benchmarks/bench_streaming.py

For each backend (ollama, openai, anthropic), against a loopback server in its own process
streaming the provider's own wire format, in one run:

1. per-chunk cost and time to first chunk of chatplug's stream against the raw SDK's own stream
   over the same server, as ratios (target: within 1.10x);
2. memory over a 100,000-chunk stream: the peak traced memory beyond the text itself, against a
   10,000-chunk stream (flat: the stream keeps nothing per chunk but its text).

Batches alternate between the contenders so that drift on the machine hits both alike; the
median batch is reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakeserver import FakeServer, Reply

WORD = "blue "
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def ollama_body(chunks: int) -> bytes:
    when = "2026-11-29T00:00:00Z"
    line = {"model": "llama3.2", "created_at": when, "message": {"role": "assistant", "content": WORD}}
    done = {"model": "llama3.2", "created_at": "2026-11-29T00:00:00Z", "message": {"role": "assistant", "content": ""},
            "done": True, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": chunks}  # fmt: skip
    one = json.dumps(line, separators=(",", ":")).encode() + b"\n"
    return one * chunks + json.dumps(done, separators=(",", ":")).encode() + b"\n"


def openai_body(chunks: int) -> bytes:
    def event(delta: dict[str, object], finish: str | None = None, usage: object = None) -> bytes:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": usage}  # fmt: skip
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    usage = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [],
             "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": chunks + 5}}  # fmt: skip
    return (
        event({"role": "assistant", "content": ""})
        + event({"content": WORD}) * chunks
        + event({}, "stop")
        + b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
    )  # fmt: skip


def anthropic_body(chunks: int) -> bytes:
    def event(kind: str, data: dict[str, object]) -> bytes:
        return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **data}).encode() + b"\n\n"

    start = {"message": {"id": "m1", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
                         "content": [], "stop_reason": None, "stop_sequence": None,
                         "usage": {"input_tokens": 5, "output_tokens": 1}}}  # fmt: skip
    return (
        event("message_start", start)
        + event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        + event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": WORD}}) * chunks
        + event("content_block_stop", {"index": 0})
        + event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": chunks}})
        + event("message_stop", {})
    )


def serve(chunks: int) -> None:
    server = FakeServer()
    ndjson = {"Content-Type": "application/x-ndjson"}
    sse = {"Content-Type": "text/event-stream; charset=utf-8"}
    server.route("POST", "/api/chat", Reply(200, ollama_body(chunks), ndjson, chunked=True))
    server.route("POST", "/v1/chat/completions", Reply(200, openai_body(chunks), sse, chunked=True))
    server.route("POST", "/v1/messages", Reply(200, anthropic_body(chunks), sse, chunked=True))
    print(server.url, flush=True)
    sys.stdin.read()
    server.close()


def start_server(chunks: int) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(chunks)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def has_text(item: object) -> bool:
    """Whether a raw SDK stream item or a chatplug chunk carries text: the first chunk that
    counts is the first with text, on both sides (an SDK's first event may carry none)."""
    text = getattr(item, "text", None)  # chatplug's chunks, Anthropic's text deltas (under .delta)
    if text is None:
        delta = getattr(item, "delta", None)
        text = getattr(delta, "text", None) if delta is not None else None
    if text is None and getattr(item, "message", None) is not None:  # Ollama's parts
        text = item.message.content  # type: ignore[attr-defined]
    if text is None and getattr(item, "choices", None):  # OpenAI's chunks
        text = item.choices[0].delta.content  # type: ignore[attr-defined]
    return bool(text)


def timed(stream: Callable[[], Iterable[object]]) -> tuple[float, float]:
    """(seconds to the first chunk with text, seconds for the whole stream)."""
    t0 = time.perf_counter()
    first = None
    for item in stream():
        if first is None and has_text(item):
            first = time.perf_counter() - t0
    return first or 0.0, time.perf_counter() - t0


def compare(contenders: dict[str, Callable[[], Iterable[object]]], batches: int = 9) -> dict[str, tuple[float, float]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for stream in contenders.values():
        timed(stream)  # warm up: connections, imports, first dispatch
    for _ in range(batches):
        for name, stream in contenders.items():
            results[name].append(timed(stream))
    return {
        name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        for name, runs in results.items()
    }


def raw_streams(url: str) -> dict[str, Callable[[], Iterable[object]]]:
    import anthropic
    import ollama
    import openai

    ollama_client = ollama.Client(host=url, timeout=120)
    openai_client = openai.OpenAI(base_url=url + "/v1", api_key="sk-x", max_retries=0)
    anthropic_client = anthropic.Anthropic(base_url=url, api_key="sk-ant-x", max_retries=0)

    # Each contender is a generator here, as chatplug's is (its stream is left in a ``with``): an
    # extra frame per chunk on one side only would be counted against it.
    def raw_ollama() -> Iterable[object]:
        yield from ollama_client.chat(model="llama3.2", messages=MESSAGES, stream=True, options={"temperature": 0.7})

    def raw_openai() -> Iterable[object]:
        with openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        ) as stream:
            yield from stream

    def raw_anthropic() -> Iterable[object]:
        with anthropic_client.messages.create(
            model="claude-sonnet-5-5", max_tokens=500, messages=MESSAGES, stream=True  # type: ignore[arg-type]
        ) as stream:
            yield from stream

    return {"ollama": raw_ollama, "openai": raw_openai, "anthropic": raw_anthropic}


def via_chatplug(backend: str) -> Callable[[], Iterable[object]]:
    import chatplug

    def stream() -> Iterable[object]:
        with chatplug.stream_completion_with_messages_sync(MESSAGES, backend=backend) as chunks:
            yield from chunks
        assert chunks.response.success, chunks.response.error

    return stream


def memory(backend: str, url: str, chunks: int) -> tuple[float, int]:
    """(peak traced MB, the text's length) of one chatplug stream of ``chunks``."""
    import chatplug

    tracemalloc.start()
    with chatplug.stream_completion_with_messages_sync(MESSAGES, backend=backend) as stream:
        for _ in stream:
            pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    text = len(stream.response.content)
    return peak / 1e6, text


def configure(url: str) -> None:
    os.environ.update(OLLAMA_HOST=url, OPENAI_BASE_URL=url + "/v1", ANTHROPIC_BASE_URL=url, LLM_MAX_RETRIES="0")
    os.environ.update(OPENAI_API_KEY="sk-x", ANTHROPIC_API_KEY="sk-ant-x")


def main() -> None:
    chunks = 1000
    server, url = start_server(chunks)
    configure(url)
    raw = raw_streams(url)
    print(f"{chunks}-chunk streams, loopback server in its own process, median of 9 alternating batches")
    print("backend    | first chunk: raw  chatplug  ratio | per chunk: raw  chatplug  ratio")
    for backend in ("ollama", "openai", "anthropic"):
        result = compare({"raw": raw[backend], "chatplug": via_chatplug(backend)})
        (raw_first, raw_total), (cp_first, cp_total) = result["raw"], result["chatplug"]
        raw_chunk, cp_chunk = raw_total / chunks * 1e6, cp_total / chunks * 1e6
        print(
            f"{backend:<10} | {raw_first * 1e3:9.2f} ms {cp_first * 1e3:6.2f} ms {cp_first / raw_first:6.2f}x "
            f"| {raw_chunk:7.1f} us {cp_chunk:6.1f} us {cp_chunk / raw_chunk:6.2f}x"
        )
    server.communicate("")
    import chatplug

    for count in (10_000, 100_000):
        server, url = start_server(count)
        configure(url)
        chatplug.close()
        peak, text = memory("ollama", url, count)
        print(
            f"memory, ollama stream of {count:,} chunks: peak {peak:.2f} MB for {text / 1e6:.2f} MB of text "
            f"({peak * 1e6 / text:.2f} bytes per byte of text)"
        )
        server.communicate("")


if __name__ == "__main__":
    serve(int(sys.argv[2])) if sys.argv[1:2] == ["--serve"] else main()
