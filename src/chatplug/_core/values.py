"""The values that cross chatplug's boundaries.

``LLMResponse`` is what callers get back. ``ChatRequest`` and ``ChatResult`` are what the
pipeline hands a backend and what a backend hands back: a backend never sees raw user
input (it is validated and copied first) and never builds an ``LLMResponse`` itself.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .checks import freeze, thaw
from .exceptions import ErrorKind

if TYPE_CHECKING:
    from .exceptions import ChatplugError
    from .tools import ResponseFormat, Tool, ToolCall, ToolCallDelta

Role = Literal["system", "user", "assistant", "tool"]

#: Defaults of the settings a ``ChatRequest`` carries, in one place (``settings`` uses them too).
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 500
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_RETRIES = 2

#: An empty read-only mapping (no options), shared.
EMPTY: Mapping[str, Any] = MappingProxyType({})


class Message(TypedDict, total=False):
    """One chat message, as a backend receives it (validated, read-only):

    - ``role``: ``"system" | "user" | "assistant" | "tool"``;
    - ``content``: a ``str``, or a tuple of parts: ``{"type": "text", "text": str}`` and
      ``{"type": "image", "media_type": str, "data": <base64 str>}`` or ``{"type": "image",
      "url": str}`` (a caller's ``"path"`` or ``bytes`` arrive read and base64-encoded);
    - on an assistant message, ``tool_calls``: ``({"id", "name", "arguments": dict}, ...)``;
    - on a tool message, ``tool_call_id`` (and ``name``, the tool's, when chatplug knows it);
    - on an assistant message, ``thinking_blocks``: the provider's own thinking blocks as it sent
      them (Anthropic's ``thinking`` with its ``signature``, ``redacted_thinking``), to be sent back
      unchanged by the backend they came from and left out by every other.
    """

    role: Role
    content: Any
    tool_calls: Any
    tool_call_id: str
    name: str
    thinking_blocks: Any


def text_of(message: Message) -> str:
    """The text of a message: its content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if part.get("type") == "text")


_REPRS: set[tuple[int, int]] = set()  # the records being shown, in each thread


class _Record:
    """``repr``, ``==`` and ``hash`` from a dataclass's fields, as ``@dataclass`` generates them,
    written once. Why: before Python 3.13, ``@dataclass`` compiles each method it generates on its
    own (~0.2 ms each); the 15 it made for the three classes below were a tenth of ``import
    chatplug``. The classes declare ``repr=False, eq=False`` and inherit these."""

    __slots__ = ()

    def __repr__(self) -> str:
        key = (id(self), threading.get_ident())
        if key in _REPRS:  # a value that holds itself (``parsed`` can be anything): as dataclasses do
            return "..."
        _REPRS.add(key)
        try:
            fields = dataclasses.fields(self)  # type: ignore[arg-type]
            shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields if f.repr)
        finally:
            _REPRS.discard(key)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dataclass with eq: the frozen ones hash

    def _hash(self) -> int:
        return hash(self._compared())

    def _compared(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare)  # type: ignore[arg-type]


@dataclass(frozen=True, repr=False, eq=False)
class ChatRequest(_Record):
    """A validated, fully resolved request, as every backend receives it. Immutable all the way
    down: ``messages`` and ``options`` are read-only copies of the caller's (``thaw()`` gives
    plain dicts and lists back), so neither a backend nor an ``on_request`` hook can change what
    another one sees.

    ``model`` is never empty: the call's, ``LLM_MODEL_NAME``, or the backend's ``default_model``.
    ``timeout`` is the seconds this attempt may take: give it to your HTTP client as its
    timeout. ``max_retries`` is how many times the provider SDK may retry a failed request.
    ``options`` holds the other keyword arguments of the call (``seed``, ``stop``, ``top_p``,
    ``num_ctx`` ...), JSON data; a backend sends those its provider knows and leaves the rest
    out with a debug log (``chatplug.toolkit.supported_options``).

    Build one by hand in a backend's own tests: ``ChatRequest(messages=({"role": "user",
    "content": "Hi"},), model="m")``; every other field has the same default as ``settings``.
    """

    messages: tuple[Message, ...]
    model: str
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout: float = DEFAULT_TIMEOUT
    options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    backend: str = ""
    max_retries: int = DEFAULT_MAX_RETRIES
    #: Tools the model may call, and how (``"auto" | "required" | "none"`` or a tool's name;
    #: ``None``: the provider's default).
    tools: tuple[Tool, ...] = ()
    tool_choice: str | None = None
    #: The structured output asked for, or ``None``.
    response_format: ResponseFormat | None = None
    #: When the whole call must be over, on ``time.monotonic()``'s clock (``None``: no deadline).
    #: ``timeout`` is what one wait may take; a backend that can bound a whole request uses this.
    deadline: float | None = None

    __hash__ = _Record._hash  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # Frozen copies, so that a caller (or a test) passing its own lists and dicts gets
        # the same guarantee as the pipeline's requests.
        object.__setattr__(self, "messages", freeze(self.messages))
        if self.options is not EMPTY:  # as in _of: any options given, even none, a read-only copy
            object.__setattr__(self, "options", freeze(self.options))

    @classmethod
    def _of(cls, fields: dict[str, Any]) -> ChatRequest:
        """``ChatRequest(**fields)`` for the pipeline, which names every field and hands in messages
        read-only already (``validate`` makes them so). ``__init__`` would copy them a second time:
        with fifty messages, 7.2-9.5% of a sync ollama call to the loopback fake server, ~150-320 us
        (``tests/benchmarks/bench_kept.py``, medians of five runs on 2 shared cores; with one
        message, 1.2% and 4.9% in two runs, within their noise)."""
        request = object.__new__(cls)
        request.__dict__.update(fields)
        if fields["options"] is not EMPTY:  # the call's own options, even none: a read-only copy
            request.__dict__["options"] = freeze(fields["options"])
        return request


@dataclass(frozen=True, init=False, repr=False, eq=False)
class ChatResult(_Record):
    """What a backend returns on success. Timing and error handling are the pipeline's.

    ``finish_reason`` may be the provider's own word: the pipeline normalises the common
    ones (``end_turn`` and ``stop_sequence`` to ``stop``, ``max_tokens`` to ``length``,
    ``tool_use`` to ``tool_calls``) and passes any other through. Token counts are ``None``
    when the provider sent none (the response then says ``usage_reported=False``, rather than
    reporting 0 as if it were counted). ``reasoning`` is the model's thinking, kept apart from
    ``content``. ``thinking_blocks`` are the provider's thinking blocks, each exactly as it sent
    it (Anthropic's ``{"type": "thinking", "thinking", "signature"}`` and ``{"type":
    "redacted_thinking", "data"}``): a provider that must have them back (Anthropic, in a tool
    loop) gets them in the next request, from ``response.message``.
    """

    content: str
    model: str
    prompt_tokens: int | None = 0
    completion_tokens: int | None = 0
    finish_reason: str | None = None
    reasoning: str = ""
    #: The tool calls asked for; ``arguments`` may be the provider's JSON text or a dict.
    tool_calls: tuple[ToolCallDelta | ToolCall, ...] = ()
    #: The provider's thinking blocks, in the order it sent them (read-only; ``()``: none).
    thinking_blocks: tuple[Mapping[str, Any], ...] = ()
    #: The sources the provider cites for its answer, as URLs (Perplexity's ``citations``).
    citations: tuple[str, ...] = ()
    #: The tokens the model spent thinking, when the provider counts them apart (``None``: it did
    #: not say). Report them in ``completion_tokens`` too when the provider bills them as output.
    reasoning_tokens: int | None = None

    __hash__ = _Record._hash  # type: ignore[assignment]

    def __init__(
        self,
        content: str,
        model: str,
        prompt_tokens: int | None = 0,
        completion_tokens: int | None = 0,
        finish_reason: str | None = None,
        reasoning: str = "",
        tool_calls: tuple[ToolCallDelta | ToolCall, ...] = (),
        thinking_blocks: tuple[Mapping[str, Any], ...] = (),
        citations: tuple[str, ...] = (),
        reasoning_tokens: int | None = None,
    ) -> None:
        # Written out (the same defaults as the fields, pinned by a test): every backend makes one
        # per reply, and the generated frozen __init__ sets each field through
        # object.__setattr__, three times slower than filling the instance's dict at once.
        self.__dict__.update(
            content=content,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            reasoning=reasoning,
            tool_calls=tool_calls,
            thinking_blocks=thinking_blocks,
            citations=citations,
            reasoning_tokens=reasoning_tokens,
        )


@dataclass(repr=False, eq=False)
class LLMResponse(_Record):
    """The result of every chatplug call, successful or not.

    The first six fields are the seed's contract, in its order. A failed call has
    ``success=False``, an ``error`` that says what happened and what to do, and an
    ``error_kind`` to branch on; ``raise_for_error()`` turns it into an exception.
    """

    content: str
    tokens_used: int
    response_time: float
    model_used: str
    success: bool
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    backend: str | None = None
    error_kind: ErrorKind | None = None
    retry_after: float | None = None
    #: The model's reasoning (thinking), never mixed into ``content``.
    reasoning: str = ""
    #: ``False`` when the provider sent no token counts (the counts are then 0, not counted).
    usage_reported: bool = True
    #: Seconds from the call to the first streamed text or reasoning; ``None`` when not streamed.
    time_to_first_token: float | None = None
    #: The tools the model asked to call (``finish_reason`` is then ``"tool_calls"``).
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: The structured output asked for with ``response_format=``: the pydantic instance or the dict.
    parsed: Any = None
    #: How many requests were made: retries and fallbacks included (0: none was sent).
    attempts: int = 0
    #: The errors of the attempts that failed before the last one (``"backend: message"``).
    attempt_errors: list[str] = field(default_factory=list)
    #: ``True`` when the response cache (``LLM_CACHE``) answered: nothing was sent (``attempts == 0``).
    cached: bool = False
    #: The provider's thinking blocks (Anthropic's ``thinking`` and ``redacted_thinking``), plain
    #: dicts exactly as it sent them; ``message`` carries them, to be sent back in a tool loop.
    thinking_blocks: list[dict[str, Any]] = field(default_factory=list)
    #: The sources the provider cites for its answer, as URLs (Perplexity's); ``[]``: none.
    citations: list[str] = field(default_factory=list)
    #: Of ``completion_tokens``, those the model spent thinking, when the provider counts them
    #: apart (Gemini's ``thoughtsTokenCount``); 0 when it does not.
    reasoning_tokens: int = 0
    exception: ChatplugError | None = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> dict[str, Any]:
        """This reply as an assistant message, to append to the conversation as is."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.thinking_blocks:  # copies: the caller may change the message it is given
            message["thinking_blocks"] = [thaw(block) for block in self.thinking_blocks]
        if self.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return message

    def raise_for_error(self) -> LLMResponse:
        """Return ``self`` if the call succeeded, else raise its ``ChatplugError``."""
        if self.exception is not None:
            raise self.exception
        return self

    def to_dict(self) -> dict[str, Any]:
        """The response as JSON-ready data (the exception object left out)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "exception"}
        if self.error_kind is not None:
            data["error_kind"] = self.error_kind.value
        data["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        data["thinking_blocks"] = [thaw(block) for block in self.thinking_blocks]
        if self.parsed is not None and hasattr(self.parsed, "model_dump"):
            data["parsed"] = self.parsed.model_dump(mode="json")
        return data


#: The finish reason of a stream its caller stopped.
CANCELLED = "cancelled"
