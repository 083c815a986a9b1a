"""chatplug in four calls: a string and a conversation, sync and async.

    python examples/quickstart.py                    # the default: Ollama at OLLAMA_HOST
    LLM_BACKEND=local python examples/quickstart.py  # a small model in-process, no server

It exits with status 1 if any call failed.
"""

from __future__ import annotations

import asyncio
import sys

from chatplug import (
    LLMResponse,
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


failures = 0


def show(label: str, response: LLMResponse) -> None:
    global failures
    if response.success:
        print(f"{label}: {response.content.strip()!r}")
        print(f"    {response.backend}/{response.model_used}, {response.tokens_used} tokens, "
              f"{response.response_time:.2f} s, finish_reason={response.finish_reason}")
    else:  # chatplug never raises for provider failures: it says what happened and what to do
        print(f"{label} failed ({response.error_kind}): {response.error}", file=sys.stderr)
        failures += 1


async def main_async() -> None:
    show("async prompt", await generate_completion_async("Name a primary colour.", temperature=0, max_tokens=32))
    show("async messages", await generate_completion_with_messages_async(CONVERSATION, temperature=0, max_tokens=32))


def main() -> int:
    show("sync prompt", generate_completion_sync("Name a primary colour.", temperature=0, max_tokens=32))
    show("sync messages", generate_completion_with_messages_sync(CONVERSATION, temperature=0, max_tokens=32))
    asyncio.run(main_async())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
