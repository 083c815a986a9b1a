"""Anthropic's Messages API, through the official ``anthropic`` SDK.

Honours ``ANTHROPIC_API_KEY`` (or ``ANTHROPIC_AUTH_TOKEN``) and ``ANTHROPIC_BASE_URL``. The
Messages API differs from chat completions in three ways handled here: system messages are a
top-level ``system`` parameter, turns must alternate (consecutive same-role messages are
merged), and ``max_tokens`` is required. The SDK is imported on first use.

Thinking (``thinking`` blocks, ``thinking_delta`` events) becomes ``reasoning``, never ``content``.
A stream reports the input tokens in ``message_start`` and the final output tokens and the stop
reason in ``message_delta``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from chatplug import (
    AuthenticationError,
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ChatResult,
    InvalidInputError,
    Message,
    hookimpl,
)
from chatplug.toolkit import env_secret, env_url, import_sdk

from ._stainless import Connection, StainlessBackend

PLACEHOLDER_KEY = "sk-ant-no-key-needed"


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

    def __init__(self) -> None:
        anthropic = import_sdk("anthropic", "anthropic")
        super().__init__(anthropic, anthropic.Anthropic, anthropic.AsyncAnthropic, anthropic.resources.Messages.create)

    def connection(self) -> Connection:
        url = env_url("ANTHROPIC_BASE_URL", self.hosted_url)
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
        no_sampling = {"temperature": f"{self.sdk.__name__} {self.sdk.__version__} takes no sampling parameters"}
        arguments = {
            **self.pass_through(request, handled=("stop",), ignored=no_sampling),
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system:
            arguments["system"] = system
        if stop:
            arguments["stop_sequences"] = _stop_sequences(stop)
        return arguments

    @staticmethod
    def create(client: Any) -> Callable[..., Any]:
        return client.messages.create  # type: ignore[no-any-return]

    def result(self, response: Any) -> ChatResult:
        text = "".join(block.text for block in response.content if block.type == "text")
        thinking = "".join(block.thinking for block in response.content if block.type == "thinking")
        return ChatResult(
            content=text,
            model=response.model or "",
            prompt_tokens=response.usage.input_tokens or 0,
            completion_tokens=response.usage.output_tokens or 0,
            finish_reason=response.stop_reason,
            reasoning=thinking,
        )

    def chunk(self, event: Any) -> ChatChunk | None:
        kind = getattr(event, "type", None)  # an event type newer than the SDK may come as a dict
        if kind == "content_block_delta":
            delta = event.delta
            if delta.type == "text_delta":
                return ChatChunk(text=delta.text or "")
            if delta.type == "thinking_delta":
                return ChatChunk(reasoning=delta.thinking or "")
            return None  # input_json_delta, signature_delta, citations_delta ...
        if kind == "message_start":
            message = event.message
            usage = getattr(message, "usage", None)  # always sent by Anthropic; not by every look-alike
            return ChatChunk(model=message.model or None, prompt_tokens=_tokens(usage, "input_tokens"))
        if kind == "message_delta":
            usage = getattr(event, "usage", None)  # cumulative: the final counts
            return ChatChunk(
                prompt_tokens=_tokens(usage, "input_tokens"),
                completion_tokens=_tokens(usage, "output_tokens"),
                finish_reason=event.delta.stop_reason,
            )
        return None  # content_block_start/stop, message_stop (the SDK skips ping itself)


def _tokens(usage: Any, name: str) -> int | None:
    value = getattr(usage, name, None)
    return value if isinstance(value, int) else None


def _to_anthropic(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, str]]]:
    """System messages joined into one ``system`` text; consecutive same-role turns merged."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict[str, str]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        if turns and turns[-1]["role"] == message["role"]:
            turns[-1] = {"role": message["role"], "content": turns[-1]["content"] + "\n\n" + message["content"]}
        else:
            turns.append({"role": message["role"], "content": message["content"]})
    if not turns:
        raise InvalidInputError("Anthropic needs at least one user message besides the system messages.")
    return system, turns


def _stop_sequences(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise InvalidInputError(f"stop must be a string or a list of strings, got {stop!r}.")


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("anthropic", AnthropicBackend)
