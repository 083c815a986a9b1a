"""``chatplug "prompt"`` and ``chatplug backends``: the command line, on the same public API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._api import generate_completion_with_messages_sync
from ._dispatch import plugins
from ._types import Message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatplug",
        description="Ask a language model for a chat completion. `chatplug backends` lists the "
        "installed backends. Unset options come from LLM_* environment variables.",
    )
    parser.add_argument("prompt", help="the user message to send")
    parser.add_argument("--backend", "-b", help="backend name (default: LLM_BACKEND or ollama)")
    parser.add_argument("--model", "-m", help="model name, optionally as backend:model")
    parser.add_argument("--system", "-s", help="a system message sent before the prompt")
    parser.add_argument("--temperature", "-t", type=float, help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=int, help="most tokens to generate")
    parser.add_argument("--json", action="store_true", help="print the whole LLMResponse as JSON")
    return parser


def list_backends(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatplug backends", description="List the installed backends.")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    as_json = parser.parse_args(argv).json
    manager = plugins()
    manager.load()
    entries = list(manager.backends)
    if as_json:
        print(json.dumps([{"name": e.name, "plugin": e.plugin, "distribution": e.distribution} for e in entries]))
        return 0 if entries else 1
    if not entries:
        print("No backends installed.", file=sys.stderr)
        return 1
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.distribution}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["backends"]:  # to send the word itself as a prompt: chatplug -- backends
        return list_backends(args_list[1:])
    args = _parser().parse_args(args_list)
    messages: list[Message] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    response = generate_completion_with_messages_sync(
        messages, args.model, args.temperature, args.max_tokens, backend=args.backend
    )
    if args.json:
        print(json.dumps(response.to_dict(), indent=2))
    elif response.success:
        print(response.content)
    if not response.success:
        print(f"chatplug: {response.error}", file=sys.stderr)
        return 1
    return 0
