"""The default backend: a local or remote Ollama server through the official ``ollama`` SDK.

Uses the native ``/api/chat`` endpoint with ``ollama.Client`` / ``ollama.AsyncClient`` (no
thread pool for async) and honours ``OLLAMA_HOST`` and ``OLLAMA_API_KEY``, both read here
(stripped, validated) and passed to the SDK, which would otherwise read them raw. The SDK is
imported on first use, not when the backend is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._backend import ChatBackend
from .._clients import ClientCache
from .._exceptions import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ChatplugError,
    ConfigError,
    InvalidInputError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
    status_error,
)
from .._types import ChatRequest, ChatResult
from ..hookspecs import hookimpl
from ._env import redacted, secret, setting

if TYPE_CHECKING:
    import ollama
    import pydantic

DEFAULT_HOST = "http://127.0.0.1:11434"

# Sent unless the caller passes their own: the sampling the seed used.
DEFAULT_OPTIONS = {"top_p": 0.9, "repeat_penalty": 1.1}

# Keyword options that are top-level request fields in Ollama's API, not model options.
TOP_LEVEL = ("keep_alive", "think", "format")

C = TypeVar("C", "ollama.Client", "ollama.AsyncClient")


class OllamaBackend(ChatBackend):
    def __init__(self) -> None:
        import ollama  # lazily: ~200 ms, paid only when this backend is used

        self._sdk = ollama
        self._clients: ClientCache[ollama.Client, ollama.AsyncClient] = ClientCache(
            lambda host, key, timeout: _client(ollama.Client, host, key, timeout),
            lambda host, key, timeout: _client(ollama.AsyncClient, host, key, timeout),
        )

    # Both raise the mapped error after the except block, not in it: raised there, it would
    # keep the SDK's exception (and the request's headers, the key among them) as __context__.

    def complete(self, request: ChatRequest) -> ChatResult:
        host, key = _connection()
        client = self._clients.sync((host, request.timeout), host, key, request.timeout, credential=key)
        try:
            return _result(client.chat(**_chat_arguments(request)))
        except Exception as exc:
            error = self._map_error(exc, request, host, key)
        raise error

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        host, key = _connection()
        client = self._clients.async_((host, request.timeout), host, key, request.timeout, credential=key)
        try:
            return _result(await client.chat(**_chat_arguments(request)))
        except Exception as exc:
            error = self._map_error(exc, request, host, key)
        raise error

    def close(self) -> None:
        for client in self._clients.clear():
            client.close()  # type: ignore[no-untyped-call]  # the SDK leaves close() unannotated

    def _map_error(self, exc: Exception, request: ChatRequest, host: str, key: str | None) -> Exception:
        """The chatplug error for what the SDK raised, with OLLAMA_API_KEY masked; ``exc``
        itself if it is no provider failure (the dispatcher reports it as a backend bug)."""
        mapped = self._mapped(exc, request, f"Ollama at {host}")
        return exc if mapped is None else redacted(mapped, key)

    def _mapped(self, exc: Exception, request: ChatRequest, where: str) -> ChatplugError | None:
        """The chatplug error for what the SDK raised, saying what to do about it."""
        import httpx
        import pydantic

        if isinstance(exc, self._sdk.ResponseError):
            status, detail = exc.status_code, exc.error
            if status == 404:
                return NotFoundError(
                    f"model {request.model!r} not found on {where} ({detail}). Pull it with "
                    f"`ollama pull {request.model}`, or choose an installed model (`ollama list`) "
                    "with LLM_MODEL_NAME or model_name=.",
                    status_code=404,
                )
            if status == -1:  # an error line inside a 200 stream: the model failed mid-run
                return ServerError(
                    f"{where} failed while generating: {detail}. Try again; if it "
                    "persists, check the Ollama server log."
                )
            hint = {
                401: " Set OLLAMA_API_KEY for ollama.com models, or run `ollama signin`.",
                429: " Wait and retry, or slow down.",
                503: " The server's queue is full: retry later, or raise OLLAMA_MAX_QUEUE.",
            }.get(status, " Check the Ollama server log." if status >= 500 else "")
            return status_error(status, f"{where} answered HTTP {status}: {detail}.{hint}")
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(
                f"{where} did not answer within {request.timeout:g} s. Raise LLM_TIMEOUT, lower "
                "max_tokens, or use a smaller model."
            )
        if isinstance(exc, (ConnectionError, httpx.ConnectError)):
            return APIConnectionError(
                f"could not connect to {where}. Start it with `ollama serve`, or set OLLAMA_HOST "
                "to the address where it runs; for an answer with no server: --backend local / LLM_BACKEND=local."
            )
        if isinstance(exc, httpx.TransportError):
            return APIConnectionError(f"the connection to {where} failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, self._sdk.RequestError):
            return BadRequestError(f"the ollama SDK rejected the request: {exc.error}")
        if isinstance(exc, pydantic.ValidationError) and exc.title == "ChatRequest":
            return _refused(exc)  # the SDK validates the request it builds before sending it
        if isinstance(exc, (ValueError, TypeError, AttributeError)):  # JSON or pydantic errors
            return InvalidResponseError(
                f"{where} sent a response that is not a valid Ollama chat reply "
                f"({type(exc).__name__}). Check that OLLAMA_HOST points at an Ollama server."
            )
        return None  # not a provider failure: the dispatcher reports it as a backend bug


def _connection() -> tuple[str, str | None]:
    """OLLAMA_HOST (or the default) and OLLAMA_API_KEY, stripped; see ``_env``."""
    return setting("OLLAMA_HOST") or DEFAULT_HOST, secret("OLLAMA_API_KEY")


def _client(cls: type[C], host: str, key: str | None, timeout: float) -> C:
    """An SDK client for ``host``. The key goes in as the header: the SDK reads OLLAMA_API_KEY
    only when no authorization header is given, and then unstripped."""
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else None
    try:
        return cls(host=host, timeout=timeout, headers=headers)
    except (ValueError, httpx.InvalidURL) as exc:  # the SDK parses the host here
        raise ConfigError(
            f"OLLAMA_HOST={host!r} is not valid ({exc}): expected an address like http://127.0.0.1:11434 "
            "or 127.0.0.1:11434."
        ) from None


def _refused(exc: pydantic.ValidationError) -> InvalidInputError:
    """The caller's error for an Ollama request the SDK refused to build, naming each field."""
    problems: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "request"
        problems.setdefault(field, []).append(error["msg"])
        inputs.setdefault(field, error.get("input"))
    said = "; ".join(f"{field}={inputs[field]!r} ({', '.join(msgs)})" for field, msgs in problems.items())
    return InvalidInputError(f"the ollama SDK refused {said}; nothing was sent.")


def _chat_arguments(request: ChatRequest) -> dict[str, Any]:
    options: dict[str, Any] = {**DEFAULT_OPTIONS, "temperature": request.temperature, "num_predict": request.max_tokens}
    top_level: dict[str, Any] = {}
    for key, value in request.options.items():
        if key in TOP_LEVEL:
            top_level[key] = value
        elif key == "stop" and isinstance(value, str):
            options["stop"] = [value]
        else:
            options[key] = value
    return {
        "model": request.model,
        "messages": list(request.messages),
        "options": options,
        "stream": False,
        **top_level,
    }


def _result(response: ollama.ChatResponse) -> ChatResult:
    return ChatResult(
        content=response.message.content or "",
        model=response.model or "",
        prompt_tokens=response.prompt_eval_count or 0,
        completion_tokens=response.eval_count or 0,
        finish_reason=response.done_reason,
    )


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("ollama", OllamaBackend)
