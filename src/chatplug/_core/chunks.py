"""``ChatChunk``, a piece of a streamed reply, apart from the other values: only streams need it,
so ``import chatplug`` does not make its class (a dataclass costs ~1 ms to make)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .values import ChatResult

if TYPE_CHECKING:
    from .tools import ToolCallDelta


# Not frozen, as the other values are: a stream makes one per piece of text, and freezing costs
# ~2 us a chunk (object.__setattr__ per field), 2.3-5.1% of each chunk of a sync ollama stream
# from the loopback fake server (``tests/benchmarks/bench_kept.py``, medians of five runs on 2
# shared cores).
@dataclass(slots=True)
class ChatChunk:
    """A piece of a streamed reply: what a backend's ``stream`` yields, and what the caller
    iterates. ``text`` and ``reasoning`` are the new text (either may be ``""``).

    A backend also reports, on any chunk (usually the last), what it learns of the whole reply:
    ``model``, the token counts and ``finish_reason``; ``None`` means "not said here". The
    pipeline adds up the text and keeps the last value of each of those.
    """

    text: str = ""
    reasoning: str = ""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    #: Pieces of tool calls (see ``ToolCallDelta``); the pipeline assembles them.
    tool_calls: tuple[ToolCallDelta, ...] = ()
    #: Whole thinking blocks of the provider's, each as it sent it (see ``ChatResult``), once the
    #: block is complete (its text streams as ``reasoning`` meanwhile); the pipeline keeps them.
    thinking_blocks: tuple[Mapping[str, Any], ...] = ()
    #: The sources the provider cites, as URLs, once it says them; the pipeline keeps the last said.
    citations: tuple[str, ...] = ()
    #: The tokens spent thinking so far, when the provider counts them apart; the pipeline keeps the last said.
    reasoning_tokens: int | None = None


def whole_chunk(result: ChatResult) -> ChatChunk:
    """A whole reply as one chunk: what a stream yields when the cache answers it, or when its
    backend has no streaming of its own (``ChatBackend.stream``'s default)."""
    return ChatChunk(
        text=result.content,
        reasoning=result.reasoning,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finish_reason=result.finish_reason,
        tool_calls=tuple(result.tool_calls),  # type: ignore[arg-type]  # ToolCalls are assembled as deltas are
        thinking_blocks=result.thinking_blocks,
        citations=result.citations,
        reasoning_tokens=result.reasoning_tokens,
    )
