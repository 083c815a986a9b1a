"""An agent with tools: chatplug runs the conversation to its end, calling your Python functions.

    python examples/tools_agent.py "What is the weather in Tokyo?"
    LLM_BACKEND=openai OPENAI_API_KEY=sk-... python examples/tools_agent.py "..."

Each tool is a plain function: its name, docstring and type hints make the schema the model sees.
``run_tools_sync`` calls the model, runs the tools it asks for (an exception goes back to the
model as a tool error), sends the results back, and stops at a final answer or ``max_steps``.
"""

from __future__ import annotations

import sys

from chatplug import run_tools_sync

FORECASTS = {"tokyo": "11 degrees and clear", "paris": "7 degrees and rain"}


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name, e.g. Tokyo.
    """
    forecast = FORECASTS.get(city.lower())
    if forecast is None:
        raise ValueError(f"no forecast for {city}")
    return forecast


def convert_temperature(celsius: float) -> float:
    """Convert a temperature from Celsius to Fahrenheit.

    Args:
        celsius: The temperature in degrees Celsius.
    """
    return round(celsius * 9 / 5 + 32, 1)


def main(question: str) -> int:
    run = run_tools_sync(question, [get_weather, convert_temperature], temperature=0, max_steps=5)
    for message in run.messages[1:]:
        if message["role"] == "tool":
            print(f"  tool {message['name']} -> {message['content']}")
        elif message.get("tool_calls"):
            for call in message["tool_calls"]:
                print(f"  model calls {call['name']}({call['arguments']})")
    if not run.response.success:
        print(f"failed ({run.response.error_kind}): {run.response.error}", file=sys.stderr)
        return 1
    print(run.response.content.strip())
    print(f"({run.steps} model calls, complete={run.complete})")
    return 0 if run.complete else 1


if __name__ == "__main__":
    sys.exit(main(" ".join(sys.argv[1:]) or "What is the weather in Tokyo?"))
