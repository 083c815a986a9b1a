"""``chatplug "prompt"``, ``chatplug backends``, ``chatplug serve`` and ``chatplug batch`` (in ``_batch``):
the command line, on the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .._core.exceptions import ChatplugError
from .._core.values import LLMResponse, Message
from .._pipeline.api import generate_completion_with_messages_sync, stream_completion_with_messages_sync
from .._pipeline.stream import Stream
from .._plugins import plugins
from ._arguments import positive_int, temperature


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="chatplug",
        description="Ask a language model for a chat completion. `chatplug backends` lists the "
        "installed backends; `chatplug serve` serves the local model over the OpenAI HTTP API; "
        "`chatplug batch IN.jsonl -o OUT.jsonl` answers a file of inputs. "
        "Unset options come from LLM_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"chatplug {__version__}")
    parser.add_argument("prompt", help="the user message to send")
    parser.add_argument("--backend", "-b", help="backend name (default: LLM_BACKEND or ollama)")
    parser.add_argument("--model", "-m", help="model name, optionally as backend:model")
    parser.add_argument("--system", "-s", help="a system message sent before the prompt")
    parser.add_argument("--temperature", "-t", type=temperature, help="sampling temperature, 0 to 2")
    parser.add_argument("--max-tokens", type=positive_int, help="most tokens to generate")
    parser.add_argument("--json", action="store_true", help="print the whole LLMResponse as JSON (when done)")
    parser.add_argument(
        "--no-stream", action="store_true", help="wait for the whole reply instead of printing it as it comes"
    )
    return parser


def list_backends(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatplug backends", description="List the installed backends.")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    as_json = parser.parse_args(argv).json
    manager = plugins()
    manager.load()
    entries = list(manager.backends)
    if as_json:
        print(
            json.dumps([{"name": e.name, "plugin": e.plugin, "distribution": e.distribution} for e in entries]),
            flush=True,
        )
        return 0 if entries else 1
    if not entries:
        print("No backends installed.", file=sys.stderr)
        return 1
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"{entry.name:<{width}}  {entry.distribution}")
    return 0


def serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="chatplug serve",
        description="Load a local GGUF model and serve the OpenAI HTTP API on 127.0.0.1 until Ctrl-C "
        "(use it with LLM_BACKEND=openai OPENAI_BASE_URL=<the printed URL>).",
    )
    parser.add_argument("--model", "-m", help="SmolLM2-135M-Instruct (the default) or the path of a .gguf file")
    parser.add_argument("--port", "-p", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    from ..backends import local

    try:
        local.serve(args.model, args.port)
    except ChatplugError as exc:
        _say(str(exc))
        return 1
    return 0


def _prefixed(message: str) -> str:
    return message if message.startswith("chatplug") else f"chatplug: {message}"


def _say(message: str) -> None:
    print(_prefixed(message), file=sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The library's warnings on the CLI's stderr, prefixed once; a failed call's own warning is
    left out (main() prints that error itself)."""

    def format(self, record: logging.LogRecord) -> str:
        return _prefixed(super().format(record))

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("chat completion failed")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    handler = _StderrHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("chatplug")
    logger.addHandler(handler)
    try:
        return _main(args_list)
    finally:
        logger.removeHandler(handler)


def _main(args_list: list[str]) -> int:
    if args_list[:1] == ["backends"]:  # to send the word itself as a prompt: chatplug -- backends
        return list_backends(args_list[1:])
    if args_list[:1] == ["serve"]:
        return serve(args_list[1:])
    if args_list[:1] == ["batch"]:
        from ._batch import main as batch

        return batch(args_list[1:])
    args = _parser().parse_args(args_list)
    messages: list[Message] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    call = (messages, args.model, args.temperature, args.max_tokens)
    if args.json or args.no_stream:
        response = generate_completion_with_messages_sync(*call, backend=args.backend)
        if args.json:
            print(json.dumps(response.to_dict(), indent=2))
        elif response.success:
            _show_reasoning(response.reasoning)
            print(response.content)
    else:
        response = _stream(stream_completion_with_messages_sync(*call, backend=args.backend))
    if not response.success:
        _say(str(response.error))
        return 1
    return 0


def _stream(stream: Stream) -> LLMResponse:
    """Print the reply as it comes: text on stdout, reasoning on stderr (dimmed on a terminal)."""
    ended_line = True
    with stream:
        for chunk in stream:
            _show_reasoning(chunk.reasoning, end="")
            if chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                ended_line = chunk.text.endswith("\n")
    response = stream.response
    if not ended_line or (response.success and not response.content):
        print()
    return response


def _show_reasoning(text: str, end: str = "\n") -> None:
    if not text:
        return
    dim, normal = ("\x1b[2m", "\x1b[0m") if sys.stderr.isatty() else ("", "")
    sys.stderr.write(f"{dim}{text}{normal}{end}")
    sys.stderr.flush()
