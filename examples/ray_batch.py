"""A batch past one machine: a JSONL file of inputs answered by chatplug in Ray workers.

    pip install -e ".[ray]"          # chatplug and ray, on every node of the cluster
    python examples/ray_batch.py IN.jsonl -o OUT.jsonl                      # a local Ray cluster
    python examples/ray_batch.py IN.jsonl -o OUT.jsonl --address auto       # the cluster this node is in
    python examples/ray_batch.py IN.jsonl -o OUT.jsonl --chunk 200 --concurrency 32 --model openai:gpt-4o-mini

The input is what ``chatplug batch`` reads: one JSON string (a prompt) or JSON list of messages
per line (or ``{"prompt": ...}`` / ``{"messages": [...]}``). The inputs go out in chunks of
``--chunk``, one Ray task per chunk; each task runs ``chatplug.generate_batch_sync`` on its chunk
with ``--concurrency`` requests at a time, so the cluster sends up to (tasks running) x
(concurrency) at once. ``OUT.jsonl`` gets one ``LLMResponse.to_dict()`` per input (with its
``"index"``), in input order, written as the chunks complete. The exit status is 1 if any input
failed.

The workers are configured by the driver's environment: every ``LLM_*``, ``CHATPLUG_*``,
``OLLAMA_*``, ``OPENAI_*`` and ``ANTHROPIC_*`` variable is passed to them through Ray's
``runtime_env`` (keys included: they travel to the cluster's nodes). So the response cache and
the client-side rate limits that chatplug reads from ``LLM_CACHE=redis://...`` and
``LLM_RATE_LIMIT`` are the same in every worker, and shared through that Redis: the workers
together stay under one provider quota and never pay twice for one request.

Resuming is ``chatplug batch``'s job on one machine; here, a failed input is just a failed line
(rerun those, e.g. through ``chatplug batch``). Ray Data users can do the same in
``ds.map_batches`` with a function that calls ``generate_batch_sync`` on the batch's prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import ray

import chatplug

PASSED = ("LLM_", "CHATPLUG_", "OLLAMA_", "OPENAI_", "ANTHROPIC_")


@ray.remote
def answer(chunk: list[Any], options: dict[str, Any]) -> list[dict[str, Any]]:
    """A chunk of inputs answered in one worker: a batch of its own, its failures in their slots."""
    responses = chatplug.generate_batch_sync(chunk, progress=False, **options)
    return [response.to_dict() for response in responses]


def chunks(path: str, size: int) -> Iterator[list[Any]]:
    """The inputs of ``path`` (one per non-blank line), ``size`` at a time."""
    chunk: list[Any] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                item = None  # not JSON: chatplug answers it with an invalid_input failure in its slot
                print(f"ray_batch: line {number} is not JSON", file=sys.stderr)
            if isinstance(item, dict):
                item = item.get("prompt", item.get("messages"))
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class Writer:
    """The responses written in input order, each chunk as soon as every earlier one is."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.next = 0  # the chunk to write next
        self.waiting: dict[int, list[dict[str, Any]]] = {}  # chunks done before an earlier one
        self.written = self.failures = 0

    def add(self, number: int, responses: list[dict[str, Any]]) -> None:
        self.waiting[number] = responses
        while self.next in self.waiting:
            for response in self.waiting.pop(self.next):
                self.out.write(json.dumps({"index": self.written, **response}, default=str) + "\n")
                self.written += 1
                self.failures += not response["success"]
            self.next += 1


def run(args: argparse.Namespace) -> int:
    env_vars = {name: value for name, value in os.environ.items() if name.startswith(PASSED)}
    if args.address:
        ray.init(address=args.address, runtime_env={"env_vars": env_vars})
    else:  # a cluster of this machine alone, on loopback
        ray.init(
            num_cpus=args.num_cpus, include_dashboard=False, runtime_env={"env_vars": env_vars},
            _node_ip_address="127.0.0.1",
        )  # fmt: skip
    options = {"model_name": args.model, "backend": args.backend, "concurrency": args.concurrency}
    in_flight: dict[ray.ObjectRef, int] = {}  # each task's result -> its chunk's number
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            writer = Writer(out)

            def wait_for_one() -> None:
                (ready,), _ = ray.wait(list(in_flight), num_returns=1)
                writer.add(in_flight.pop(ready), ray.get(ready))

            for number, chunk in enumerate(chunks(args.input, args.chunk)):
                in_flight[answer.remote(chunk, options)] = number
                if len(in_flight) >= args.tasks:  # bounded: the input is read as the tasks complete
                    wait_for_one()
            while in_flight:
                wait_for_one()
    finally:
        ray.shutdown()
    if writer.failures:
        print(f"ray_batch: {writer.failures} of {writer.written} inputs failed", file=sys.stderr)
        return 1
    print(f"ray_batch: {writer.written} inputs answered")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Answer a JSONL file of inputs with chatplug on a Ray cluster.")
    parser.add_argument("input", help="the JSONL file of inputs")
    parser.add_argument("--output", "-o", required=True, help="the JSONL file of responses to write")
    parser.add_argument("--address", help="the Ray cluster to join (e.g. auto); default: start one on this machine")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local cluster (default: 2)")
    parser.add_argument("--chunk", type=int, default=100, help="inputs per Ray task (default: 100)")
    parser.add_argument("--tasks", type=int, default=16, help="tasks in flight at most (default: 16)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at a time in each task (default: 8)")
    parser.add_argument("--backend", help="backend name (default: LLM_BACKEND or ollama)")
    parser.add_argument("--model", help="model name, optionally as backend:model")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
