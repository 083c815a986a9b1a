"""Anthropic's Messages API, through the official ``anthropic`` SDK.

Honours ``ANTHROPIC_API_KEY`` (or ``ANTHROPIC_AUTH_TOKEN``) and ``ANTHROPIC_BASE_URL``. The
Messages API differs from chat completions in three ways handled here: system messages are a
top-level ``system`` parameter, turns must alternate (consecutive same-role messages are
merged), and ``max_tokens`` is required. The SDK is imported on first use.

Thinking (``thinking`` blocks, ``thinking_delta`` events) becomes ``reasoning``, never ``content``.
The ``thinking`` blocks (with their ``signature``) and ``redacted_thinking`` blocks are also kept
whole, as sent, in ``thinking_blocks``: with tools, the Messages API wants them back unchanged, in
order, before the ``tool_use`` blocks of the assistant turn that carries them (``response.message``
does). A stream's are built from their ``content_block_start`` and deltas, and reported at their
``content_block_stop``.
A stream reports the input tokens in ``message_start`` and the final output tokens and the stop
reason in ``message_delta``.

Tools are ``{"name", "description", "input_schema"}``; an assistant's tool calls are ``tool_use``
blocks (after its text), and tool results ``tool_result`` blocks in a user turn (consecutive ones,
and a user message after them, make one turn, as turns must alternate). Images are ``image``
blocks with a base64 or URL source. Structured output is ``output_config.format``. Tool calls
come back as ``tool_use`` blocks, or streamed as a ``content_block_start`` and ``input_json_delta``
fragments, keyed by the block's index.
"""

from __future__ import annotations

import socket
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from types import ModuleType
from typing import Any, ClassVar

from chatplug import (
    AuthenticationError,
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ChatResult,
    InvalidInputError,
    Message,
    ResponseFormat,
    Tool,
    ToolCallDelta,
    hookimpl,
)
from chatplug.toolkit import env_secret, env_url, freeze, import_sdk, lost, thaw

from ._stainless import CAPABILITIES, Connection, StainlessBackend, arguments_json, parts_of, text_of

PLACEHOLDER_KEY = "sk-ant-no-key-needed"

#: The blocks of the model's thinking, sent back as they came (``ChatResult.thinking_blocks``).
THINKING = frozenset({"thinking", "redacted_thinking"})


def _keepalive() -> tuple[tuple[int, int, int], ...]:
    """The socket options of anthropic's default async transport: keep-alive probes after 60 s idle."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5), ("TCP_KEEPIDLE", 60)):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    if not hasattr(socket, "TCP_KEEPINTVL") and sys.platform == "darwin":
        options.append((socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPALIVE", 0x10), 60))
    return tuple(options)


class AnthropicBackend(StainlessBackend):
    default_model = "claude-sonnet-5-5"
    hints: ClassVar[Mapping[int, str]] = {
        401: "Check ANTHROPIC_API_KEY.",
        403: "Check that ANTHROPIC_API_KEY may use this model.",
        404: "Check the model name {model!r} (LLM_MODEL_NAME or model_name=), e.g. claude-sonnet-5-5.",
        429: "Wait and retry, or check the organization's rate limits.",
        529: "Anthropic is overloaded: retry later.",
    }
    hosted_url = "https://api.anthropic.com"
    capabilities = CAPABILITIES
    path = "/v1/messages"
    header_parameters: ClassVar[Mapping[str, str]] = {
        "user_profile_id": "anthropic-user-profile-id",
        "workspace_id": "anthropic-workspace-id",
    }

    #: TCP keep-alive, as the SDK's own async transport sets it (a long request is not cut by a NAT).
    socket_options = _keepalive()

    def __init__(self) -> None:
        anthropic = import_sdk("anthropic", "anthropic")
        create = anthropic.resources.Messages.create
        super().__init__(anthropic, anthropic.Anthropic, anthropic.AsyncAnthropic, create)
        # The models create() warns of, from the tables it reads: chatplug posts the body itself,
        # so it warns as create() would. The OpenTelemetry span create() opens for each call (and
        # the trace context it sends), by the same request options. All are the SDK's module
        # attributes (2.6 on): a release without one loses only that (said once).
        tables = sys.modules[create.__module__]
        self._deprecated: Mapping[str, str] = _sdk_table(tables, "DEPRECATED_MODELS", Mapping, "old models") or {}
        self._adaptive = frozenset(
            _sdk_table(tables, "MODELS_TO_WARN_WITH_THINKING_ENABLED", Collection, "models thinking adaptively") or ()
        )
        attributes = _sdk_table(tables, "messages_create_request_attributes", Callable, "its OpenTelemetry span")
        if attributes is not None:
            self.request_options = {
                "span_name": "anthropic.messages.create", "span_route": self.path, "span_attributes": attributes,
            }  # fmt: skip
        #: What is said, at debug level, of the temperature every request leaves out.
        said = f"{anthropic.__name__} {anthropic.__version__} takes no sampling parameters"
        self._no_sampling = {"temperature": said}

    def base_url(self) -> str | None:
        return env_url("ANTHROPIC_BASE_URL", self.hosted_url)

    def connection(self) -> Connection:
        url = self.base_url()
        key = env_secret("ANTHROPIC_API_KEY")
        token = env_secret("ANTHROPIC_AUTH_TOKEN")
        if not key and not token and url is None:
            raise AuthenticationError(
                "ANTHROPIC_API_KEY is not set. Set it to your Anthropic API key (or ANTHROPIC_AUTH_TOKEN "
                "to a bearer token), or ANTHROPIC_BASE_URL to a compatible server that needs none."
            )
        where = f"Anthropic at {url}" if url else "Anthropic"
        if token and not key:  # ANTHROPIC_AUTH_TOKEN: sent as a bearer token
            return Connection(url, None, where, auth_token=token)
        return Connection(url, key or PLACEHOLDER_KEY, where)

    def arguments(self, request: ChatRequest, conn: Connection) -> dict[str, Any]:
        stop = request.options.get("stop")
        system, messages = _to_anthropic(request.messages)
        arguments = {
            **self.pass_through(request, handled=("stop",), ignored=self._no_sampling),
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system:
            arguments["system"] = system
        if stop:
            arguments["stop_sequences"] = _stop_sequences(stop)
        if request.tools:
            arguments["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            arguments["tool_choice"] = _tool_choice(request.tool_choice)
        if request.response_format is not None:
            arguments["output_config"] = self._output_config(request.response_format, arguments.get("output_config"))
        if request.model in self._deprecated or request.model in self._adaptive:
            self._warn(request.model, arguments.get("thinking"))
        return arguments

    def _warn(self, model: str, thinking: object) -> None:
        """The SDK's warnings, in its words, of a deprecated model and of ``thinking.type=enabled``
        on a model that wants ``adaptive``."""
        if model in self._deprecated:
            warnings.warn(
                f"The model '{model}' is deprecated and will reach end-of-life on {self._deprecated[model]}.\n"
                "Please migrate to a newer model. Visit "
                "https://docs.anthropic.com/en/docs/resources/model-deprecations for more information.",
                DeprecationWarning,
                stacklevel=2,
            )
        if model in self._adaptive and isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
            warnings.warn(
                f"Using Claude with {model} and 'thinking.type=enabled' is deprecated. Use "
                "'thinking.type=adaptive' instead which results in better model performance in our testing: "
                "https://platform.claude.com/docs/en/build-with-claude/adaptive-thinking",
                UserWarning,
                stacklevel=2,
            )

    def _output_config(self, response_format: ResponseFormat, given: object) -> dict[str, Any]:
        """``output_config`` asking for ``response_format``, with what else a caller's own
        ``output_config=`` option says (``effort``)."""
        if "output_config" not in self.accepted:
            raise InvalidInputError(
                f"response_format needs an anthropic SDK whose messages.create() takes output_config "
                f"({self._not_accepted}): pip install -U anthropic."
            )
        # Anthropic takes a subset of JSON Schema (every object closed with additionalProperties
        # false; constraints such as minimum moved into the description): the SDK's own
        # transform_schema, which its messages.parse() applies, makes a pydantic schema fit it. The
        # pipeline validates the reply against the caller's full schema.
        schema = response_format.json_schema()
        transform = getattr(self.sdk, "transform_schema", None)
        if transform is not None:
            try:
                schema = transform(schema)
            except (ValueError, TypeError) as exc:
                raise InvalidInputError(
                    f"response_format {response_format.name!r}: Anthropic cannot take this schema ({exc})."
                ) from None
        config = dict(given) if isinstance(given, Mapping) else {}
        config["format"] = {"type": "json_schema", "schema": schema}
        return config

    def result(self, response: Any) -> ChatResult:
        blocks, usage = response["content"], response["usage"]
        uses = [block for block in blocks if block["type"] == "tool_use"]
        return ChatResult(
            content="".join(block["text"] for block in blocks if block["type"] == "text"),
            model=response.get("model") or "",
            prompt_tokens=usage.get("input_tokens") or 0,
            completion_tokens=usage.get("output_tokens") or 0,
            finish_reason=response.get("stop_reason"),
            reasoning="".join(block["thinking"] for block in blocks if block["type"] == "thinking"),
            tool_calls=tuple(
                ToolCallDelta(i, block["id"], block["name"], arguments_json(block["input"]))
                for i, block in enumerate(uses)
            ),
            thinking_blocks=tuple(freeze(block) for block in blocks if block["type"] in THINKING),
        )

    def reader(self) -> Callable[[Any], ChatChunk | None]:
        return _Reader().read

    def chunk(self, event: Any) -> ChatChunk | None:
        """One event on its own (a stream's own reader, ``reader()``, keeps its thinking blocks)."""
        return _Reader().read(event)


class _Reader:
    """One stream's events read, each into its chunk, with the stream's thinking blocks built as
    the SDK's own accumulator builds them (the ``thinking_delta`` texts added up, the
    ``signature_delta`` set) and each reported whole, in a chunk of its own, at its
    ``content_block_stop``. A block cut off before its end is not reported: without its
    signature, it cannot be sent back."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        #: The thinking blocks begun and not ended, by index: the block so far, its texts.
        self._open: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def read(self, event: Any) -> ChatChunk | None:
        kind = event.get("type") if isinstance(event, Mapping) else None  # a null event is skipped, as before
        if kind == "content_block_delta":
            delta = event["delta"]
            kind = delta.get("type")
            if kind == "text_delta":
                return ChatChunk(text=delta.get("text") or "")
            if self._open and event["index"] in self._open:  # a piece of a thinking block
                block, texts = self._open[event["index"]]
                if kind == "thinking_delta":
                    texts.append(delta.get("thinking") or "")
                elif kind == "signature_delta":
                    block["signature"] = delta.get("signature")
            if kind == "thinking_delta":
                return ChatChunk(reasoning=delta.get("thinking") or "")
            if kind == "input_json_delta":  # a fragment of the arguments of the block's tool call
                return ChatChunk(tool_calls=(ToolCallDelta(event["index"], arguments=delta.get("partial_json") or ""),))
            return None  # signature_delta, citations_delta ...
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":  # its input ({}) comes in the deltas
                return ChatChunk(tool_calls=(ToolCallDelta(event["index"], block.get("id"), block.get("name")),))
            if block.get("type") in THINKING:
                self._open[event["index"]] = (dict(block), [])
            return None
        if kind == "content_block_stop":
            if self._open and event["index"] in self._open:
                block, texts = self._open.pop(event["index"])
                if texts:
                    block["thinking"] = (block.get("thinking") or "") + "".join(texts)
                return ChatChunk(thinking_blocks=(freeze(block),))
            return None
        if kind == "message_start":
            message = event["message"]
            usage = message.get("usage")  # always sent by Anthropic; not by every look-alike
            return ChatChunk(model=message.get("model") or None, prompt_tokens=_tokens(usage, "input_tokens"))
        if kind == "message_delta":
            usage = event.get("usage")  # cumulative: the final counts
            return ChatChunk(
                prompt_tokens=_tokens(usage, "input_tokens"),
                completion_tokens=_tokens(usage, "output_tokens"),
                finish_reason=event["delta"].get("stop_reason"),
            )
        return None  # message_stop (the SDK skips ping itself)


def _tokens(usage: object, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, Mapping) else None
    return value if isinstance(value, int) else None


def _to_anthropic(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, Any]]]:
    """System messages joined into one ``system`` text; the others as turns, consecutive
    same-role ones merged (tool results are user turns): texts joined, blocks put together."""
    systems: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            systems.append(text_of(message.get("content")))
            continue
        role, content = _turn(message)
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": _merged(turns[-1]["content"], content)}
        else:
            turns.append({"role": role, "content": content})
    if not turns:
        raise InvalidInputError("Anthropic needs at least one user message besides the system messages.")
    return "\n\n".join(systems), turns


def _turn(message: Message) -> tuple[str, str | list[dict[str, Any]]]:
    """A message's role and content on the wire: plain text as it is, else content blocks."""
    role, content = message["role"], message.get("content")
    if role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
        blocks = _blocks(content)
        if blocks:  # an empty text block is refused; an empty result has no content
            result["content"] = blocks
        return "user", [result]
    calls, thinking = message.get("tool_calls"), message.get("thinking_blocks")
    if isinstance(content, str) and not calls and not thinking:
        return role, content
    uses = [
        {"type": "tool_use", "id": call["id"], "name": call["name"], "input": thaw(call["arguments"])}
        for call in calls or ()
    ]
    # The thinking first, each block as the provider sent it: it checks them by their signature.
    # Another provider's (DeepSeek's reasoning_content) is not Anthropic's to read: left out.
    ours = [thaw(block) for block in thinking or () if block.get("type") in THINKING]
    return role, ours + _blocks(content) + uses


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Content as Anthropic's blocks: text (empty text left out: it is refused) and images."""
    return [_block(part) for part in parts_of(content) if part.get("type") != "text" or part.get("text")]


def _block(part: Mapping[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    url = part.get("url")
    if url is None:
        return {"type": "image", "source": {"type": "base64", "media_type": part["media_type"], "data": part["data"]}}
    if url.startswith("data:"):  # a data: URL is no URL source for Anthropic: its base64 data is
        header, _, data = url[len("data:") :].partition(",")
        media_type, *params = header.split(";")
        if "base64" not in params or not media_type:
            raise InvalidInputError("Anthropic takes a data: URL image only base64-encoded (data:image/png;base64,..).")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _merged(first: str | list[dict[str, Any]], then: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Two same-role turns' content as one: texts joined by a blank line, as they always were;
    with blocks on either side, the blocks of both in order."""
    if isinstance(first, str) and isinstance(then, str):
        return first + "\n\n" + then
    return (_blocks(first) if isinstance(first, str) else first) + (_blocks(then) if isinstance(then, str) else then)


def _tool(tool: Tool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": tool.name}
    if tool.description:
        wire["description"] = tool.description
    wire["input_schema"] = tool.schema()
    if tool.strict:  # Anthropic's strict tool use (structured outputs): the caller's dict asked for it
        wire["strict"] = True
    return wire


#: chatplug's tool choices in Anthropic's words; any other choice is a tool's name.
TOOL_CHOICES: Mapping[str, str] = {"auto": "auto", "required": "any", "none": "none"}


def _tool_choice(choice: str) -> dict[str, str]:
    if choice in TOOL_CHOICES:
        return {"type": TOOL_CHOICES[choice]}
    return {"type": "tool", "name": choice}


def _stop_sequences(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise InvalidInputError(f"stop must be a string or a list of strings, got {stop!r}.")


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("anthropic", AnthropicBackend)


def _sdk_table(module: ModuleType, name: str, kind: Any, what: str) -> Any:
    """``module.<name>``, a table or function of the SDK's messages module that ``create()`` uses,
    if it is there and a ``kind``; else ``None``, said once: what ``create()`` does with it
    (warn of ``what``, or open ``what``) is then not done for chatplug's calls."""
    found = getattr(module, name, None)
    if isinstance(found, kind):
        return found
    lost(f"anthropic's handling of {what} on chatplug's calls", f"{module.__name__} has no {name}")
    return None
