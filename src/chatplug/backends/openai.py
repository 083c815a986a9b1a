"""OpenAI and every OpenAI-compatible server, through the official ``openai`` SDK.

``OPENAI_BASE_URL`` points it at vLLM, llama.cpp's ``llama-server``, LM Studio, Groq,
OpenRouter or Ollama's ``/v1``; ``OPENAI_API_KEY`` is required only by the hosted service
(a local server gets a placeholder key). The SDK is imported on first use.

The reasoning of a thinking model comes in ``reasoning_content`` (llama.cpp, vLLM, DeepSeek) or
``reasoning`` (OpenRouter, Ollama), fields the SDK does not know but keeps: it becomes
``reasoning``, never ``content``.

Tools, tool results, images and structured output go in chat completions' own shapes: ``tools``
of ``{"type": "function", "function": {...}}``, assistant ``tool_calls`` with their arguments as
JSON text, ``tool`` messages, ``image_url`` parts (a URL or a ``data:`` URL) and a ``json_schema``
``response_format``. Tool calls come back whole (``message.tool_calls``) or in pieces keyed by
their ``index`` (``delta.tool_calls``); the pipeline parses and assembles them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import urlsplit

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
from chatplug.toolkit import env_secret, env_url, import_sdk, thaw

from ._stainless import CAPABILITIES, Connection, StainlessBackend, arguments_json, parts_of, text_of

HOSTED = "https://api.openai.com/v1"

# A local OpenAI-compatible server ignores the key, but the SDK refuses to start without one.
PLACEHOLDER_KEY = "sk-no-key-needed"


class OpenAIBackend(StainlessBackend):
    default_model = "gpt-4o-mini"
    hints: ClassVar[Mapping[int, str]] = {
        401: "Check OPENAI_API_KEY.",
        403: "Check OPENAI_API_KEY and that it may use this model.",
        404: "Check the model name {model!r} (LLM_MODEL_NAME or model_name=) and OPENAI_BASE_URL.",
        429: "Wait and retry, or check the account's rate limits and quota.",
    }
    hosted_url = HOSTED
    capabilities = CAPABILITIES
    path = "/chat/completions"
    request_options = MappingProxyType({"security": {"bearer_auth": True}})  # as create() sends

    def __init__(self) -> None:
        openai = import_sdk("openai", "openai")
        super().__init__(openai, openai.OpenAI, openai.AsyncOpenAI, openai.resources.chat.Completions.create)

    def base_url(self) -> str | None:
        return env_url("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")

    def connection(self) -> Connection:
        url = self.base_url()
        key = env_secret("OPENAI_API_KEY")
        hosted = _is_hosted(url)
        if not key:
            if hosted:
                raise AuthenticationError(
                    "OPENAI_API_KEY is not set. Set it to your OpenAI API key, or set OPENAI_BASE_URL "
                    "to an OpenAI-compatible server (e.g. http://127.0.0.1:8080/v1) that needs none."
                )
            key = PLACEHOLDER_KEY
        return Connection(url, key, f"OpenAI at {url}" if url and not hosted else "OpenAI")

    def arguments(self, request: ChatRequest, conn: Connection) -> dict[str, Any]:
        # OpenAI's own API replaced max_tokens with max_completion_tokens (reasoning models
        # refuse the old name); compatible servers widely know only max_tokens.
        limit = "max_completion_tokens" if _is_hosted(conn.base_url) else "max_tokens"
        arguments = {
            **self.pass_through(request),
            "model": request.model,
            "messages": [_message(message) for message in request.messages],
            "temperature": request.temperature,
            limit: request.max_tokens,
        }
        if request.tools:
            arguments["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            arguments["tool_choice"] = _tool_choice(request.tool_choice)
        if request.response_format is not None:
            arguments["response_format"] = _response_format(request.response_format)
        return arguments

    def result(self, response: Any) -> ChatResult:
        choice = response["choices"][0]
        message = choice["message"]
        usage = response.get("usage")  # None (or absent) from servers that do not count: usage_reported=False
        return ChatResult(
            content=message.get("content") or "",
            model=response.get("model") or "",
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            completion_tokens=usage.get("completion_tokens") if usage else None,
            finish_reason=choice.get("finish_reason"),
            reasoning=_reasoning(message),
            tool_calls=tuple(
                _tool_call(i, call) for i, call in enumerate(message.get("tool_calls") or ()) if _is_function(call)
            ),
            citations=_citations(response),
        )

    def stream_arguments(self, request: ChatRequest) -> dict[str, Any]:
        # Usage comes in a last chunk with no choices, only if asked for; a caller's own
        # stream_options (passed through by ``arguments``) win.
        return {} if "stream_options" in request.options else {"stream_options": {"include_usage": True}}

    def chunk(self, event: Any) -> ChatChunk | None:
        choice = next((choice for choice in event.get("choices") or () if choice.get("index", 0) == 0), None)
        delta = choice.get("delta") if choice is not None else None
        pieces = (delta.get("tool_calls") if delta else None) or ()
        usage = event.get("usage")  # on the last chunk (choices: []) when asked for; else None or absent
        return ChatChunk(
            text=(delta.get("content") or "") if delta else "",
            reasoning=_reasoning(delta) if delta else "",
            model=event.get("model") or None,
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            completion_tokens=usage.get("completion_tokens") if usage else None,
            finish_reason=choice.get("finish_reason") if choice is not None else None,
            tool_calls=tuple(_tool_call(i, call) for i, call in enumerate(pieces) if _is_function(call)),
            citations=_citations(event),
        )


def _message(message: Message) -> dict[str, Any]:
    """A chatplug message in chat completions' shape. Plain text messages go as they are."""
    role, content = message["role"], message.get("content")
    if isinstance(content, str) and len(message) == 2:
        return thaw(message)  # type: ignore[no-any-return]
    if role == "tool":  # chatplug's "name" is not part of OpenAI's tool message
        if any(part.get("type") != "text" for part in parts_of(content)):
            raise InvalidInputError(
                "OpenAI takes only text in a tool result: send the image in a user message after it."
            )
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": text_of(content)}
    wire: dict[str, Any] = {"role": role}
    if role == "user" and isinstance(content, tuple):
        wire["content"] = [_part(part) for part in content]
    else:  # system and assistant text parts (no images there) joined, for servers taking only strings
        wire["content"] = text_of(content)
    calls = message.get("tool_calls")
    if calls:
        # An empty content goes as null, as OpenAI sends it back. (OpenAI also takes the key left
        # out, as its recordings show, but llama.cpp's server refuses a message without it.)
        wire["content"] = wire["content"] or None
        wire["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": arguments_json(thaw(call["arguments"]))},
            }
            for call in calls
        ]
    return wire


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    url = part.get("url") or f"data:{part['media_type']};base64,{part['data']}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool(tool: Tool) -> dict[str, Any]:
    # Not strict: strict function calling takes only OpenAI's strict-schema subset (every property
    # required, additionalProperties false everywhere), which a function with a default value or a
    # pydantic model with an optional field does not meet. The arguments are parsed and reported
    # by the pipeline either way. The key is sent, as OpenAI's own clients do; a caller's dict
    # that says "strict": true gets it.
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.schema()
    function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "required", "none"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(response_format: ResponseFormat) -> dict[str, Any]:
    # Not strict, for the same reason as tools: pydantic's schemas (defaults, optional fields, no
    # additionalProperties) are outside the strict subset, and a strict request with one is refused
    # with HTTP 400. The model is still asked for that schema, and the pipeline validates the
    # reply against it (invalid_output when it does not fit). A caller's wrapper may ask for strict.
    return {
        "type": "json_schema",
        "json_schema": {"name": _schema_name(response_format.name), "schema": response_format.json_schema(),
                        "strict": response_format.strict},
    }  # fmt: skip


def _schema_name(name: str) -> str:
    """A schema's name as OpenAI takes it: 1 to 64 letters, digits, ``_`` or ``-``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "response"


def _is_function(call: Mapping[str, Any]) -> bool:
    """A function tool call, or a piece of one (whose type is said only once), not a custom
    tool's call (chatplug defines none)."""
    return call.get("type") in (None, "function")


def _tool_call(position: int, call: Mapping[str, Any]) -> ToolCallDelta:
    """A tool call of a reply, or a piece of one in a stream (keyed by its ``index``; servers that
    send none get its position)."""
    index = call.get("index")
    function = call.get("function") or {}
    return ToolCallDelta(
        index if isinstance(index, int) else position,
        call.get("id") or None,
        function.get("name") or None,
        function.get("arguments") or "",
    )


def _reasoning(message: Mapping[str, Any]) -> str:
    """The reasoning an OpenAI-compatible server sent alongside a message or a delta, in a field
    OpenAI's API does not have."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _citations(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The URLs a compatible server cites for its answer, beside the choices (Perplexity's
    ``citations``, on the reply and on its stream's chunks); OpenAI's API has none."""
    citations = body.get("citations")
    return tuple(url for url in citations if isinstance(url, str)) if isinstance(citations, list) else ()


def _is_hosted(base_url: str | None) -> bool:
    return base_url is None or (urlsplit(base_url).hostname or "").endswith("api.openai.com")


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("openai", OpenAIBackend)
