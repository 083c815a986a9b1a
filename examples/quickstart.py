"""chatplug in four calls: a string and a conversation, sync and async.

    python examples/quickstart.py            # the default: Ollama at OLLAMA_HOST
    LLM_BACKEND=openai OPENAI_BASE_URL=http://127.0.0.1:8088/v1 python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

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


def show(label: str, response: LLMResponse) -> None:
    if response.success:
        print(f"{label}: {response.content.strip()!r}")
        print(f"    {response.backend}/{response.model_used}, {response.tokens_used} tokens, "
              f"{response.response_time:.2f} s, finish_reason={response.finish_reason}")
    else:  # chatplug never raises for provider failures: it says what happened and what to do
        print(f"{label} failed ({response.error_kind}): {response.error}")


async def main_async() -> None:
    show("async prompt", await generate_completion_async("Name a primary colour.", temperature=0, max_tokens=32))
    show("async messages", await generate_completion_with_messages_async(CONVERSATION, temperature=0, max_tokens=32))


def main() -> None:
    show("sync prompt", generate_completion_sync("Name a primary colour.", temperature=0, max_tokens=32))
    show("sync messages", generate_completion_with_messages_sync(CONVERSATION, temperature=0, max_tokens=32))
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
