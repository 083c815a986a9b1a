"""OpenAI and every OpenAI-compatible server, through the official ``openai`` SDK.

``OPENAI_BASE_URL`` points it at vLLM, llama.cpp's ``llama-server``, LM Studio, Groq,
OpenRouter or Ollama's ``/v1``; ``OPENAI_API_KEY`` is required only by the hosted service
(a local server gets a placeholder key). The SDK is imported on first use.

The reasoning of a thinking model comes in ``reasoning_content`` (llama.cpp, vLLM, DeepSeek) or
``reasoning`` (OpenRouter, Ollama), fields the SDK does not know but keeps: it becomes
``reasoning``, never ``content``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from chatplug import AuthenticationError, ChatBackend, ChatChunk, ChatRequest, ChatResult, hookimpl
from chatplug.toolkit import env_secret, env_url, import_sdk, thaw

from ._stainless import Connection, StainlessBackend

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

    def __init__(self) -> None:
        openai = import_sdk("openai", "openai")
        super().__init__(openai, openai.OpenAI, openai.AsyncOpenAI, openai.resources.chat.Completions.create)

    def connection(self) -> Connection:
        url = env_url("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
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
        return {
            **self.pass_through(request),
            "model": request.model,
            "messages": thaw(request.messages),
            "temperature": request.temperature,
            limit: request.max_tokens,
        }

    @staticmethod
    def create(client: Any) -> Callable[..., Any]:
        return client.chat.completions.create  # type: ignore[no-any-return]

    def result(self, response: Any) -> ChatResult:
        choice = response.choices[0]
        usage = response.usage  # None from servers that do not count: usage_reported=False
        return ChatResult(
            content=choice.message.content or "",
            model=response.model or "",
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason,
            reasoning=_reasoning(choice.message),
        )

    def stream_arguments(self, request: ChatRequest) -> dict[str, Any]:
        # Usage comes in a last chunk with no choices, only if asked for; a caller's own
        # stream_options (passed through by ``arguments``) win.
        return {} if "stream_options" in request.options else {"stream_options": {"include_usage": True}}

    def chunk(self, event: Any) -> ChatChunk | None:
        choice = next((choice for choice in event.choices or () if getattr(choice, "index", 0) == 0), None)
        delta = choice.delta if choice is not None else None
        usage = event.usage  # on the last chunk (choices: []) when asked for; else None or absent
        return ChatChunk(
            text=(delta.content or "") if delta is not None else "",
            reasoning=_reasoning(delta) if delta is not None else "",
            model=event.model or None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            finish_reason=choice.finish_reason if choice is not None else None,
        )


def _reasoning(message: Any) -> str:
    """The reasoning an OpenAI-compatible server sent alongside a message or a delta: fields the
    SDK does not declare, kept on its model."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


def _is_hosted(base_url: str | None) -> bool:
    return base_url is None or (urlsplit(base_url).hostname or "").endswith("api.openai.com")


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("openai", OpenAIBackend)
