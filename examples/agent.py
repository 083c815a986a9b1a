"""An agent that keeps its own history and asks chatplug for each next turn (the seed's pattern).

chatplug is stateless: the agent owns the conversation, sends all of it each turn, and decides
what to do on failure using ``error_kind`` rather than parsing strings.

    python examples/agent.py "Plan a picnic" "Make it vegetarian"

It exits with status 1 if a turn could not be answered.
"""

from __future__ import annotations

import asyncio
import sys

from chatplug import ErrorKind, LLMResponse, Message, generate_completion_with_messages_async


class Agent:
    def __init__(self, system_prompt: str, model_name: str | None = None, max_history: int = 20) -> None:
        self.system: Message = {"role": "system", "content": system_prompt}
        self.history: list[Message] = []
        self.model_name = model_name
        self.max_history = max_history
        self.tokens_used = 0
        self.failures = 0

    async def ask(self, text: str, retries: int = 2) -> str:
        self.history.append({"role": "user", "content": text})
        messages = [self.system, *self.history[-self.max_history:]]
        response: LLMResponse | None = None
        for _attempt in range(retries + 1):
            response = await generate_completion_with_messages_async(messages, self.model_name, max_tokens=256)
            if response.success:
                break
            if response.error_kind in (ErrorKind.RATE_LIMIT, ErrorKind.OVERLOADED, ErrorKind.TIMEOUT):
                await asyncio.sleep(response.retry_after or 1.0)  # transient: back off and retry
                continue
            break  # configuration, input or a missing model: retrying will not help
        assert response is not None
        if not response.success:
            self.history.pop()  # keep the history consistent for the next turn
            self.failures += 1
            return f"[agent could not answer: {response.error}]"
        self.tokens_used += response.tokens_used
        self.history.append({"role": "assistant", "content": response.content})
        return response.content


async def main(turns: list[str]) -> int:
    agent = Agent("You are a concise, helpful planning assistant.")
    for turn in turns:
        print(f"> {turn}")
        print(await agent.ask(turn))
    print(f"({len(agent.history)} messages in history, {agent.tokens_used} tokens used)")
    return 1 if agent.failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:] or ["Plan a picnic for four people.", "Make it vegetarian."])))
