"""The OpenAI-compatible providers, as data: one ``Provider`` row each in ``PROVIDERS``, all run on
the openai backend's machinery (its SDK, the aiohttp transport, the deadline, the toolkit's
redaction) by ``CompatibleBackend``, which only applies the row: where to connect, which key to
send, and the provider's differences from OpenAI's wire.

Each provider reads ``<NAME>_API_KEY`` and ``<NAME>_BASE_URL`` (NAME: the backend's name,
uppercased), never ``OPENAI_*``; azure reads ``AZURE_OPENAI_API_KEY`` and ``AZURE_OPENAI_ENDPOINT``.
Adding a provider is a row here and its wire test (``tests/test_compatible.py``). Each quirk names
its source: the provider's API reference first, LiteLLM's ``litellm/llms/<provider>/chat/
transformation.py`` second. (Message names, which mistral, groq and xai refuse, are never sent:
chatplug's ``name`` is a tool message's tool, which OpenAI's wire has no field for.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from chatplug import (
    AuthenticationError,
    ChatBackend,
    ChatChunk,
    ChatRequest,
    ChatResult,
    ConfigError,
    InvalidInputError,
    hookimpl,
)
from chatplug.toolkit import env_secret, env_url, freeze

from ._stainless import CAPABILITIES, Connection
from .openai import PLACEHOLDER_KEY, OpenAIBackend

# The options of OpenAI's penalties, refused together by several providers.
PENALTIES = ("frequency_penalty", "presence_penalty")


@dataclass(frozen=True)
class Provider:
    """One OpenAI-compatible provider: where it is, which key it takes, and how its wire differs."""

    name: str
    #: The base URL of its chat completions API (``<NAME>_BASE_URL`` overrides it).
    base_url: str
    default_model: str
    #: Where its quirks below come from: the provider's API reference.
    docs: str
    #: Whether a call needs a key (``<NAME>_API_KEY``): a local server's is optional, sent when set.
    key_required: bool = True
    #: What it can do of chatplug's features; a call that needs another is refused before sending.
    capabilities: frozenset[str] = CAPABILITIES
    #: Options it refuses, each with why: ``invalid_input`` before sending, never a silent drop.
    refused_options: Mapping[str, str] = field(default_factory=dict)
    #: Options it refuses on some models only: model name prefix -> the options.
    refused_by_model: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: OpenAI's option names it spells otherwise (mistral: ``seed`` is ``random_seed``).
    renamed_options: Mapping[str, str] = field(default_factory=dict)
    #: ``tool_choice`` values it spells otherwise (``"required"`` is ``"any"`` for mistral).
    tool_choice: Mapping[str, str] = field(default_factory=dict)
    #: Whether it takes a tool's ``strict``; left out otherwise (chatplug validates the arguments).
    tool_strict: bool = True
    #: How it takes a JSON schema for structured output: OpenAI's ``json_schema`` or ``json_object``
    #: with a ``schema`` beside it (fireworks).
    schema_form: str = "json_schema"
    #: Whether it takes ``response_format`` on a streamed call.
    streams_response_format: bool = True
    #: Headers sent from environment variables when they are set: header -> variable.
    headers_from: Mapping[str, str] = field(default_factory=dict)
    #: Whether its reasoning must go back on the assistant turns that carried it (DeepSeek's thinking
    #: mode with tools): kept as a ``reasoning_content`` thinking block in ``response.message``.
    returns_reasoning: bool = False
    #: The name of the output limit: ``max_tokens``, or ``max_completion_tokens`` (OpenAI's models).
    limit_name: str = "max_tokens"

    @property
    def key_variable(self) -> str:
        return "AZURE_OPENAI_API_KEY" if self.name == "azure" else f"{self.name.upper()}_API_KEY"

    @property
    def url_variable(self) -> str:
        return "AZURE_OPENAI_ENDPOINT" if self.name == "azure" else f"{self.name.upper()}_BASE_URL"


PROVIDERS: tuple[Provider, ...] = (
    Provider(
        "groq", "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile",
        docs="https://console.groq.com/docs/openai",
        # "logprobs, logit_bias, top_logprobs" are not supported; structured
        # outputs "do not support streaming" (console.groq.com/docs/structured-outputs).
        refused_options={name: "Groq does not support it" for name in ("logprobs", "logit_bias", "top_logprobs")},
        streams_response_format=False,
    ),
    Provider(
        "openrouter", "https://openrouter.ai/api/v1", "openai/gpt-4o-mini",
        docs="https://openrouter.ai/docs/api-reference/overview",
        # Optional app attribution (openrouter.ai/docs/app-attribution); reasoning comes as `reasoning`.
        headers_from={"HTTP-Referer": "OPENROUTER_APP_URL", "X-Title": "OPENROUTER_APP_TITLE"},
    ),
    Provider(
        "deepseek", "https://api.deepseek.com/v1", "deepseek-flash",
        docs="https://api-docs.deepseek.com/api/create-chat-completion",
        # deepseek-chat and deepseek-reasoner were retired on 2026-07-24; deepseek-flash is the
        # name its quick start gives (api-docs.deepseek.com, "Your First API Call").
        # Reasoning comes as `reasoning_content` (api-docs.deepseek.com/guides/thinking_mode).
        # No image input on its chat API. Its response_format takes only "text" and "json_object"
        # (api-docs.deepseek.com/guides/json_mode): a json_schema one is refused with HTTP 400
        # "This response_format type is unavailable now", so structured output is refused here.
        # In thinking mode, an assistant turn with tool calls must carry its reasoning_content back
        # on the next request of the same turn (api-docs.deepseek.com/guides/thinking_mode#tool-calls).
        capabilities=frozenset({"tools"}),
        returns_reasoning=True,
    ),
    Provider(
        "mistral", "https://api.mistral.ai/v1", "mistral-small-latest",
        docs="https://docs.mistral.ai/api/#tag/chat",
        # tool_choice takes "any" for "required"; the seed is `random_seed`. Its reasoning comes as
        # content chunks, `thinking` then `text` (docs.mistral.ai/capabilities/reasoning): read
        # by CompatibleBackend.result and chunk.
        tool_choice={"required": "any"},
        renamed_options={"seed": "random_seed"},
    ),
    Provider(
        "together", "https://api.together.xyz/v1", "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        docs="https://docs.together.ai/reference/chat-completions-1",
    ),
    Provider(
        "fireworks", "https://api.fireworks.ai/inference/v1", "accounts/fireworks/models/llama-v3p3-70b-instruct",
        docs="https://docs.fireworks.ai/api-reference/post-chatcompletions",
        # tool_choice "any" for "required"; a schema as {"type": "json_object", "schema": ...}
        # (docs.fireworks.ai/structured-responses/structured-response-formatting).
        tool_choice={"required": "any"},
        schema_form="json_object",
    ),
    Provider(
        "xai", "https://api.x.ai/v1", "grok-3-mini",
        docs="https://docs.x.ai/docs/api-reference#chat-completions",
        # Reasoning models refuse presence/frequency penalties and stop (docs.x.ai/docs/guides/
        # reasoning); LiteLLM's xai/chat/transformation.py drops tool strict.
        # A reply with tool calls whose finish_reason is "" is read as tool_calls by the pipeline.
        # grok-code-fast is a reasoning model too (LiteLLM refuses stop and frequency_penalty there).
        refused_by_model={
            "grok-3-mini": ("stop", *PENALTIES),
            "grok-4": ("stop", *PENALTIES),
            "grok-code-fast": ("stop", *PENALTIES),
        },
        tool_strict=False,
    ),
    Provider(
        "cerebras", "https://api.cerebras.ai/v1", "llama-3.3-70b",
        docs="https://inference-docs.cerebras.ai/api-reference/chat-completions",
        # Not supported: frequency_penalty, presence_penalty, logit_bias, parallel_tool_calls
        # (inference-docs.cerebras.ai/resources/openai#currently-unsupported-openai-features).
        refused_options={
            name: "Cerebras does not support it"
            for name in (*PENALTIES, "logit_bias", "parallel_tool_calls")
        },
    ),
    Provider(
        "perplexity", "https://api.perplexity.ai", "sonar",
        docs="https://docs.perplexity.ai/api-reference/chat-completions-post",
        # No tool calling: refused before sending.
        capabilities=frozenset({"images", "response_format"}),
    ),
    Provider(
        "vllm", "http://localhost:8000/v1", "",
        docs="https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
        key_required=False,
    ),
    Provider(
        "lmstudio", "http://localhost:1234/v1", "",
        docs="https://lmstudio.ai/docs/app/api/endpoints/openai",
        key_required=False,
    ),
    Provider(
        "azure", "", "gpt-4o-mini",
        docs="https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle",
        # The v1 API at {endpoint}/openai/v1/, no api-version parameter; OpenAI's models there
        # take max_completion_tokens. The model is the deployment's name.
        limit_name="max_completion_tokens",
    ),
)  # fmt: skip


class CompatibleBackend(OpenAIBackend):
    """The openai backend, connected and translated as ``provider`` says."""

    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider
        self.default_model = provider.default_model or None  # type: ignore[misc,assignment]
        self.capabilities = provider.capabilities  # type: ignore[misc]
        self.hosted_url = provider.base_url  # type: ignore[misc]
        key, url = provider.key_variable, provider.url_variable
        self.hints = {  # type: ignore[misc]
            401: f"Check {key}.",
            403: f"Check {key} and that it may use this model.",
            404: f"Check the model name {{model!r}} (LLM_MODEL_NAME or model_name=) and {url}.",
            429: "Wait and retry, or check the account's rate limits and quota.",
        }

    def base_url(self) -> str | None:
        provider = self.provider
        if provider.name == "azure":
            endpoint = env_url("AZURE_OPENAI_ENDPOINT", "https://my-resource.openai.azure.com")
            return f"{endpoint.rstrip('/')}/openai/v1/" if endpoint else None
        return env_url(provider.url_variable, provider.base_url) or provider.base_url

    def connection(self) -> Connection:
        provider = self.provider
        url = self.base_url()
        if url is None:
            raise ConfigError(
                "AZURE_OPENAI_ENDPOINT is not set: set it to your resource's endpoint, e.g. "
                "https://my-resource.openai.azure.com."
            )
        key = env_secret(provider.key_variable)
        if not key:
            if provider.key_required:
                raise AuthenticationError(
                    f"{provider.key_variable} is not set: set it to your {provider.name} API key."
                )
            key = PLACEHOLDER_KEY
        where = provider.name if url == provider.base_url else f"{provider.name} at {url}"
        return Connection(url, key, where)

    def client_arguments(self, conn: Connection, request: ChatRequest) -> dict[str, Any]:
        # OPENAI_ORG_ID and OPENAI_PROJECT_ID are read by the SDK itself: never sent to another provider.
        omit = self.sdk.Omit()
        headers: dict[str, Any] = {"OpenAI-Organization": omit, "OpenAI-Project": omit}
        return {**super().client_arguments(conn, request), "default_headers": headers}

    def _headers(self) -> dict[str, str]:
        """The headers the provider's variables say, read at each call (as keys and URLs are: a
        client is reused across calls, so they cannot be its default headers)."""
        headers = {}
        for header, variable in self.provider.headers_from.items():
            value = env_url(variable, "https://example.com") if header == "HTTP-Referer" else _env_text(variable)
            if value:
                headers[header] = value
        return headers

    def arguments(self, request: ChatRequest, conn: Connection) -> dict[str, Any]:
        provider = self.provider
        _refuse(provider, request)
        arguments = super().arguments(request, conn)
        if provider.headers_from:
            headers = self._headers()
            if headers:  # the caller's extra_headers win
                arguments["extra_headers"] = {**headers, **(arguments.get("extra_headers") or {})}
        if provider.limit_name not in arguments:  # super() chose by the base URL: not OpenAI's own
            arguments[provider.limit_name] = arguments.pop("max_tokens", None) or arguments.pop(
                "max_completion_tokens", request.max_tokens
            )
        for name, spelled in provider.renamed_options.items():
            if name in request.options:
                arguments[spelled] = arguments.pop(name, request.options[name])
        if not provider.tool_strict:
            for tool in arguments.get("tools", ()):
                tool["function"].pop("strict", None)
        choice = arguments.get("tool_choice")
        if isinstance(choice, str) and choice in provider.tool_choice:
            arguments["tool_choice"] = provider.tool_choice[choice]
        if provider.returns_reasoning:  # one wire message per chatplug message, in order
            for message, wire in zip(request.messages, arguments["messages"], strict=True):
                reasoning = _reasoning_content(message)
                if reasoning:
                    wire["reasoning_content"] = reasoning
        response_format = arguments.get("response_format")
        if response_format is not None and provider.schema_form == "json_object":
            arguments["response_format"] = {
                "type": "json_object",
                "schema": response_format["json_schema"]["schema"],
            }
        return arguments

    def result(self, response: Any) -> ChatResult:
        result = super().result(_as_openai(response, "message"))
        if self.provider.returns_reasoning and result.reasoning:
            return replace(result, thinking_blocks=(_reasoning_block(result.reasoning),))
        return result

    def chunk(self, event: Any) -> ChatChunk | None:
        return super().chunk(_as_openai(event, "delta"))

    def reader(self) -> Callable[[Any], ChatChunk | None]:
        """For a provider whose reasoning goes back: the stream's reasoning, whole, as one
        ``reasoning_content`` block on its last chunk (its text streams as ``reasoning``)."""
        if not self.provider.returns_reasoning:
            return self.chunk
        pieces: list[str] = []

        def read(event: Any) -> ChatChunk | None:
            chunk = self.chunk(event)
            if chunk is not None:
                pieces.append(chunk.reasoning)
                if chunk.finish_reason is not None and any(pieces):
                    chunk.thinking_blocks = (_reasoning_block("".join(pieces)),)
            return chunk

        return read

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        self._check_stream(request)
        return super().stream(request)

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        self._check_stream(request)
        return super().astream(request)

    def _check_stream(self, request: ChatRequest) -> None:
        if request.response_format is not None and not self.provider.streams_response_format:
            raise InvalidInputError(
                f"{self.provider.name} gives no structured output (response_format=) on a streamed call: "
                "nothing was sent. Ask for the whole reply instead."
            )


def _reasoning_block(text: str) -> Mapping[str, str]:
    return freeze({"type": "reasoning_content", "reasoning_content": text})  # type: ignore[no-any-return]


def _reasoning_content(message: Mapping[str, Any]) -> str:
    """The reasoning an assistant message carries back, from its ``reasoning_content`` blocks."""
    blocks = message.get("thinking_blocks") or ()
    return "".join(block["reasoning_content"] for block in blocks if block.get("type") == "reasoning_content")


def _refuse(provider: Provider, request: ChatRequest) -> None:
    """An option the provider refuses is ``invalid_input``, before anything is sent."""
    for name, why in provider.refused_options.items():
        if name in request.options:
            raise InvalidInputError(f"{provider.name} refuses the option {name!r} ({why}): nothing was sent.")
    for prefix, names in provider.refused_by_model.items():
        if request.model.startswith(prefix):
            for name in names:
                if name in request.options:
                    raise InvalidInputError(
                        f"{provider.name}'s model {request.model!r} refuses the option {name!r}: nothing was sent."
                    )


def _as_openai(payload: Any, key: str) -> Any:
    """A reply (``key``: ``"message"``) or a stream event (``"delta"``) in OpenAI's shape, where a
    provider's differs: content sent as a list of chunks (mistral's reasoning: ``thinking`` chunks,
    then ``text`` ones; docs.mistral.ai/capabilities/reasoning) becomes text, its thinking
    ``reasoning_content``; reasoning tokens counted apart from the completion's (xai's usage has
    total = prompt + completion + reasoning; LiteLLM's xai/chat/transformation.py folds them in)
    are counted in the completion's, as OpenAI counts them. Anything else is left as it is."""
    if not isinstance(payload, dict):
        return payload
    for choice in payload.get("choices") or ():
        part = choice.get(key) if isinstance(choice, dict) else None
        if isinstance(part, dict) and isinstance(part.get("content"), list):
            payload = {**payload, "choices": [_joined(choice, key) for choice in payload["choices"]]}
            break
    usage = payload.get("usage")
    if isinstance(usage, dict):
        details = usage.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        prompt, completion, total = (usage.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens"))
        if (
            isinstance(reasoning, int)
            and isinstance(prompt, int)
            and isinstance(completion, int)
            and isinstance(total, int)
            and reasoning
            and total == prompt + completion + reasoning
        ):
            payload = {**payload, "usage": {**usage, "completion_tokens": completion + reasoning}}
    return payload


def _joined(choice: Any, key: str) -> Any:
    """``choice`` with its content chunks made text, and its thinking chunks reasoning."""
    part = choice.get(key) if isinstance(choice, dict) else None
    if not isinstance(part, dict) or not isinstance(part.get("content"), list):
        return choice
    text, thinking = [], []
    for chunk in part["content"]:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("type") == "text" and isinstance(chunk.get("text"), str):
            text.append(chunk["text"])
        elif chunk.get("type") == "thinking":
            for piece in chunk.get("thinking") or ():
                if isinstance(piece, dict) and isinstance(piece.get("text"), str):
                    thinking.append(piece["text"])
    joined = {**part, "content": "".join(text)}
    if thinking and not joined.get("reasoning_content"):
        joined["reasoning_content"] = "".join(thinking)
    return {**choice, key: joined}


def _env_text(variable: str) -> str | None:
    return os.environ.get(variable, "").strip() or None


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    for provider in PROVIDERS:
        register(provider.name, partial(CompatibleBackend, provider))
