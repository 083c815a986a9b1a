"""The default backend: a local or remote Ollama server through the official ``ollama`` SDK.

Uses the native ``/api/chat`` endpoint with ``ollama.Client`` / ``ollama.AsyncClient`` (no
thread pool for async) and honours ``OLLAMA_HOST`` and ``OLLAMA_API_KEY``, both read here
(stripped, validated) and passed to the SDK, which would otherwise read them raw. Built on
``chatplug.toolkit`` alone; the SDK is imported on first use, not when the backend is registered.

Tools go out as Ollama's ``tools``, each tool's ``parameters`` exactly the JSON Schema chatplug
built (the SDK's own ``Tool`` model would drop most of its keywords: see ``_body``); an assistant
message's calls as ``tool_calls`` with their arguments as a JSON object; a tool result as a
``tool`` message with ``tool_name``. Images go in a message's ``images`` as base64 data (Ollama
fetches no URLs). Structured output is the top-level ``format`` field, set to the JSON schema.
Ollama has no ``tool_choice``: ``"auto"`` is its behaviour and ``"none"`` sends no tools; the
others cannot be said and are refused.
The SDK's models keep no tool-call ids (neither in replies nor in the messages sent), so the
calls of a reply are numbered ``call_0``, ``call_1`` ... and results are matched by tool name.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from chatplug import (
    BadRequestError,
    ChatBackend,
    ChatChunk,
    ChatplugError,
    ChatRequest,
    ChatResult,
    ConfigError,
    InvalidInputError,
    Message,
    NotFoundError,
    ServerError,
    Tool,
    ToolCallDelta,
    hookimpl,
)
from chatplug.toolkit import (
    ClientCache,
    async_transport_options,
    deadline_client,
    env_secret,
    env_setting,
    first_within,
    import_sdk,
    invalid_response,
    lean_cookies,
    lost,
    private_attribute,
    status_error,
    thaw,
    transport_error,
)

if TYPE_CHECKING:
    import ollama
    import pydantic

logger = logging.getLogger("chatplug")

DEFAULT_HOST = "http://127.0.0.1:11434"

# Sent unless the caller passes their own: the sampling the seed used.
DEFAULT_OPTIONS = {"top_p": 0.9, "repeat_penalty": 1.1}

# Keyword options that are top-level request fields in Ollama's API, not model options.
TOP_LEVEL = ("keep_alive", "think", "format")

HINTS = {
    401: "Set OLLAMA_API_KEY for ollama.com models, or run `ollama signin`.",
    429: "Wait and retry, or slow down.",
    503: "The server's queue is full: retry later, or raise OLLAMA_MAX_QUEUE.",
}
NOT_RUNNING = (
    "Start it with `ollama serve`, or set OLLAMA_HOST to the address where it runs. To get an answer "
    "with no server at all, use the embedded model: --backend local, or LLM_BACKEND=local."
)

C = TypeVar("C", "ollama.Client", "ollama.AsyncClient")


class OllamaBackend(ChatBackend):
    default_model = "llama3.2"
    capabilities = frozenset({"tools", "images", "response_format"})
    bounds_deadline = True  # deadline_client and first_within

    def endpoint(self, request: ChatRequest) -> str:
        """OLLAMA_HOST as the calls read it (the response cache keys on it; the SDK takes a host
        without a scheme as http)."""
        host = env_setting("OLLAMA_HOST") or DEFAULT_HOST
        return host if "://" in host else f"http://{host}"

    def __init__(self) -> None:
        try:
            sdk = import_sdk("ollama")  # lazily: ~200 ms, paid only when this backend is used
        except ValueError as exc:  # the SDK parses OLLAMA_HOST as it is imported
            raise ConfigError(f"OLLAMA_HOST is not valid ({exc}): {_HOST_FORMS}.") from None
        self._sdk = sdk
        self._response: type[ollama.ChatResponse] = sdk.ChatResponse
        self._chat_request = _chat_request_model(sdk)
        self._clients: ClientCache[ollama.Client, ollama.AsyncClient] = ClientCache(
            # Sync: every socket of the client gives up at the call's deadline (see deadline_client).
            lambda host, key, timeout: _bounded(_client(sdk.Client, host, key, timeout)),
            # Async: on aiohttp unless LLM_ASYNC_TRANSPORT=default (the SDK passes these to its httpx client).
            lambda host, key, timeout: _lean(_client(sdk.AsyncClient, host, key, timeout, **async_transport_options())),
        )

    def complete(self, request: ChatRequest) -> ChatResult:
        host, key = _connection()
        arguments = _chat_arguments(request)
        with self._clients.sync((host, request.timeout), host, key, request.timeout, credential=key) as client:
            try:
                return _result(self._chat(client, arguments, stream=False))
            except Exception as exc:
                raise self._mapped(exc, request, host) from None

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        host, key = _connection()
        arguments = _chat_arguments(request)
        with self._clients.async_((host, request.timeout), host, key, request.timeout, credential=key) as client:
            try:
                return _result(await self._chat(client, arguments, stream=False))
            except Exception as exc:
                raise self._mapped(exc, request, host) from None

    def _chat(self, client: ollama.Client | ollama.AsyncClient, arguments: dict[str, Any], stream: bool) -> Any:
        """``client.chat(stream=stream, **arguments)``: its reply, or for an ``AsyncClient`` the
        coroutine of it. A call with tools sends the same body with the tools whole (``_body``),
        through the SDK's ``_request``, which ``chat`` itself ends in."""
        if "tools" in arguments and self._chat_request is not None:
            body = _body(self._sdk, self._chat_request, arguments, stream=stream)
            return client._request(self._response, "POST", "/api/chat", content=body, stream=stream)
        chat: Callable[..., Any] = client.chat  # the SDK's overloads take a literal stream, not a bool
        return chat(stream=stream, **arguments)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """The reply as Ollama streams it: one chunk per NDJSON part, on the cached client (its
        lease held until the stream ends). Closing this generator closes the SDK's, and with it
        the HTTP response."""
        host, key = _connection()
        arguments = _chat_arguments(request)
        with self._clients.sync((host, request.timeout), host, key, request.timeout, credential=key) as client:
            parts: Iterator[ollama.ChatResponse] | None = None
            try:
                parts = self._chat(client, arguments, stream=True)  # sends nothing until iterated
                finished, calls = False, 0
                for part in first_within(parts, request.deadline):  # the first part within the deadline
                    finished = part.done is True
                    chunk = _chunk(part, calls)
                    calls += len(chunk.tool_calls)
                    yield chunk
                if not finished:
                    raise _ended_early(host)
            except Exception as exc:
                raise self._mapped(exc, request, host) from None
            finally:
                if isinstance(parts, Generator):
                    parts.close()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The async twin of ``stream``, on the event loop's cached ``AsyncClient``."""
        host, key = _connection()
        arguments = _chat_arguments(request)
        with self._clients.async_((host, request.timeout), host, key, request.timeout, credential=key) as client:
            parts: AsyncIterator[ollama.ChatResponse] | None = None
            try:
                parts = await self._chat(client, arguments, stream=True)
                finished, calls = False, 0
                async for part in parts:
                    finished = part.done is True
                    chunk = _chunk(part, calls)
                    calls += len(chunk.tool_calls)
                    yield chunk
                if not finished:
                    raise _ended_early(host)
            except Exception as exc:
                raise self._mapped(exc, request, host) from None
            finally:
                if isinstance(parts, AsyncGenerator):
                    await parts.aclose()

    def close(self) -> None:
        self._clients.close()

    def _mapped(self, exc: Exception, request: ChatRequest, host: str) -> Exception:
        """The chatplug error for what the SDK raised, saying what to do about it; ``exc``
        itself if it is no provider failure (the pipeline reports it as a backend bug)."""
        where = f"Ollama at {host}"
        if isinstance(exc, ChatplugError):
            return exc
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
                    f"{where} failed while generating: {detail}. Try again; if it persists, check the "
                    "Ollama server log."
                )
            # The SDK raises ResponseError from httpx's HTTPStatusError: its response has the headers.
            response = getattr(exc.__context__, "response", None)
            hint = HINTS.get(status, "Check the Ollama server log." if status >= 500 else "")
            return status_error(status, detail, where=where, headers=getattr(response, "headers", None), hint=hint)
        mapped = transport_error(
            exc, where=where, timeout=request.timeout, connect_hint=NOT_RUNNING, setting="OLLAMA_HOST"
        )
        if mapped is not None:
            return mapped
        if isinstance(exc, self._sdk.RequestError):
            return BadRequestError(f"the ollama SDK rejected the request: {exc.error}")
        import pydantic

        if isinstance(exc, pydantic.ValidationError) and exc.title == "ChatRequest":
            return _refused(exc)  # the SDK validates the request it builds before sending it
        if isinstance(exc, (ValueError, TypeError, AttributeError, RecursionError)):  # JSON or pydantic errors
            return invalid_response(where, exc)
        return exc


_HOST_FORMS = "expected an address like http://127.0.0.1:11434 or 127.0.0.1:11434"


def _connection() -> tuple[str, str | None]:
    """OLLAMA_HOST (or the default) and OLLAMA_API_KEY, stripped and checked."""
    host = env_setting("OLLAMA_HOST") or DEFAULT_HOST
    scheme, sep, _ = host.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ConfigError(f"OLLAMA_HOST={host!r} is not valid: {_HOST_FORMS}.")
    return host, env_secret("OLLAMA_API_KEY")


def _client(cls: type[C], host: str, key: str | None, timeout: float, **options: Any) -> C:
    """An SDK client for ``host``. The key goes in as the header: the SDK reads OLLAMA_API_KEY
    only when no authorization header is given, and then unstripped. ``options`` go to its httpx
    client (an async one's transport)."""
    headers = {"authorization": f"Bearer {key}"} if key else None
    try:
        return cls(host=host, timeout=timeout, headers=headers, **options)
    except Exception as exc:  # the SDK parses the host here (ValueError, httpx.InvalidURL)
        raise ConfigError(f"OLLAMA_HOST={host!r} is not valid ({exc}): {_HOST_FORMS}.") from None


def _bounded(client: ollama.Client) -> ollama.Client:
    """``client`` with its httpx client's sockets bounded by the call's deadline, and its cookie
    jar read only for replies that set a cookie (``lean_cookies``). The SDK keeps
    that client in a private attribute (``_client``): with an SDK that keeps it otherwise, the
    calls go unwrapped, bounded per operation by their timeout but not by the call's deadline
    (said once)."""
    import httpx  # the SDK's HTTP stack, imported with it

    http = private_attribute(
        client,
        "_client",
        httpx.Client,
        what="the overall deadline of sync ollama calls (each connect, read and write keeps its own timeout)",
    )
    if http is not None:
        deadline_client(lean_cookies(http))
    return client


def _lean(client: ollama.AsyncClient) -> ollama.AsyncClient:
    """``client`` with its httpx client's cookie jar read only for replies that set a cookie
    (``lean_cookies``); with an SDK that keeps that client otherwise than in ``_client``, as it is
    (said once)."""
    import httpx

    http = private_attribute(client, "_client", httpx.AsyncClient, what="lean cookies on async ollama calls")
    if http is not None:
        lean_cookies(http)
    return client


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
    """The SDK's ``chat`` arguments for ``request``; ``InvalidInputError`` for what Ollama cannot
    be asked, raised before anything is sent. A plain text request is what it always was."""
    options: dict[str, Any] = {**DEFAULT_OPTIONS, "temperature": request.temperature, "num_predict": request.max_tokens}
    top_level: dict[str, Any] = {}
    for key, value in request.options.items():
        if key in TOP_LEVEL:
            top_level[key] = thaw(value)
        elif key == "stop" and isinstance(value, str):
            options["stop"] = [value]
        else:
            options[key] = thaw(value)
    features: dict[str, Any] = {}
    if request.tools and request.tool_choice not in (None, "auto", "none"):
        raise InvalidInputError(
            f"the ollama backend cannot honour tool_choice={request.tool_choice!r}: Ollama has no tool_choice "
            "(the model decides). Use tool_choice='auto' (or leave it out), or 'none' to send no tools; nothing "
            "was sent."
        )
    if request.tools and request.tool_choice != "none":
        features["tools"] = [_tool(tool) for tool in request.tools]
    if request.response_format is not None:
        if "format" in top_level:
            raise InvalidInputError(
                "the ollama backend was given both response_format= and format=: both set Ollama's format "
                "field; pass one of them. Nothing was sent."
            )
        top_level["format"] = request.response_format.json_schema()
    messages = [_message(message, i) for i, message in enumerate(request.messages)]
    # ``stream`` is the caller's to pass (False or True), so that the SDK's overloads type the answer.
    return {"model": request.model, "messages": messages, **features, "options": options, **top_level}


def _tool(tool: Tool) -> dict[str, Any]:
    """A tool as Ollama takes it, its parameters the JSON Schema as built (a fresh copy)."""
    if tool.strict:
        logger.warning("ollama: tool %r asks for strict mode, which Ollama has not: strict is not sent", tool.name)
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.schema()},
    }


def _body(sdk: ModuleType, chat_request: type[pydantic.BaseModel], arguments: dict[str, Any], stream: bool) -> bytes:
    """The JSON body the SDK's ``chat(stream=stream, **arguments)`` sends, built by its own
    models (messages, options, format ... validated and shaped alike), but with the tools as
    ``_tool`` made them. The SDK's ``Tool`` model keeps few JSON Schema keywords (``type``,
    ``items``, ``description``, ``enum`` of a property): an ``Enum`` parameter (a ``$ref``),
    an ``Optional`` one (``anyOf``), a nested object's ``properties``, every ``default``
    would reach Ollama empty, and ollama 0.6 has no public way to keep them (a ``Tool`` made
    with ``model_construct`` is sent whole, but with a pydantic warning on every call). Sent
    with the SDK's ``Client._request``, so that errors and replies are what ``chat`` makes
    of them. Both are private: with an SDK without them (``_chat_request_model``), its ``chat``
    sends the tools as its ``Tool`` keeps them. Encoded here, as httpx encodes ``json=``, so
    that a schema that is no JSON data is the caller's error, not a reply that could not be read."""
    # What the SDK's chat does to each message (ollama._client._copy_messages, private).
    messages = [
        sdk.Message.model_validate(
            {
                key: [sdk.Image(value=image) for image in value] if key == "images" else value
                for key, value in message.items()
                if value
            }
        )
        for message in arguments["messages"]
    ]
    request = chat_request(**{**arguments, "messages": messages, "tools": [], "stream": stream})
    body = request.model_dump(exclude_none=True)
    body["tools"] = arguments["tools"]
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # validated before, all but the dict tools' schemas
        raise InvalidInputError(
            f"a tool's parameters schema must be JSON data (str, number, bool, None, list, dict): "
            f"{type(exc).__name__}: {exc}. Nothing was sent."
        ) from None


def _chat_request_model(sdk: ModuleType) -> type[pydantic.BaseModel] | None:
    """The SDK's ``ChatRequest`` model, with which ``_body`` builds a call's body, if its clients
    have the ``_request`` method that sends one (both private, and both in ollama 0.4 to 0.6.3);
    ``None``, said in a warning, otherwise: tools then go through the SDK's ``Tool`` model."""
    model = getattr(getattr(sdk, "_types", None), "ChatRequest", None)
    sends = all(_takes_a_body(getattr(client, "_request", None)) for client in (sdk.Client, sdk.AsyncClient))
    fields = set(getattr(model, "model_fields", None) or ())
    if sends and callable(getattr(model, "model_dump", None)) and {"model", "messages", "tools", "stream"} <= fields:
        return model
    lost(
        "sending each tool's JSON Schema whole to ollama (the SDK's Tool model leaves out anyOf, $ref, default ...)",
        "this ollama SDK has no ollama._types.ChatRequest model (with model, messages, tools and stream) "
        "or no Client._request(cls, method, url, content=..., stream=...)",
    )
    return None


def _takes_a_body(method: object) -> bool:
    """Whether ``method`` takes the arguments ``_chat`` gives the SDK's ``_request``."""
    if not callable(method):
        return False
    try:
        inspect.signature(method).bind(None, object, "POST", "/api/chat", content=b"", stream=False)
    except (TypeError, ValueError):
        return False
    return True


def _message(message: Message, i: int) -> dict[str, Any]:
    """One message in Ollama's shape: text parts joined into ``content``, images (base64) in
    ``images``, an assistant's calls in ``tool_calls``, a tool result's tool in ``tool_name``.
    Ids go along for when the SDK keeps them (ollama 0.6 drops them)."""
    content = message.get("content")
    sent: dict[str, Any] = {"role": message["role"]}
    if isinstance(content, str):
        sent["content"] = content
    else:
        sent["content"] = "".join(part["text"] for part in content or () if part["type"] == "text")
        images = [_image(part, f"messages[{i}].content[{j}]") for j, part in enumerate(content or ())]
        if any(image is not None for image in images):
            sent["images"] = [image for image in images if image is not None]
    if message.get("tool_calls"):
        sent["tool_calls"] = [
            {"id": call["id"], "function": {"name": call["name"], "arguments": thaw(call["arguments"])}}
            for call in message["tool_calls"]
        ]
    if message["role"] == "tool":
        if message.get("name"):
            sent["tool_name"] = message["name"]
        sent["tool_call_id"] = message["tool_call_id"]
    return sent


def _image(part: Mapping[str, Any], at: str) -> str | None:
    """An image part's base64 data (``None`` for a text part). Ollama takes no URL: a ``data:``
    URL's base64 data is used, any other URL refused."""
    if part["type"] != "image":
        return None
    if "data" in part:
        return str(part["data"])
    url = str(part["url"])
    header, _, data = url.partition(",")
    if header.startswith("data:") and header.endswith(";base64") and data:
        return data
    raise InvalidInputError(
        f"{at}: the ollama backend cannot take an image by URL ({url[:80]!r}): Ollama takes image data only. "
        "Pass the image as {'type': 'image', 'path': ...} or {'type': 'image', 'data': ..., 'media_type': ...}; "
        "nothing was sent."
    )


def _tool_calls(calls: Sequence[ollama.Message.ToolCall] | None, start: int) -> tuple[ToolCallDelta, ...]:
    """A reply's tool calls, numbered on from ``start`` (calls before them in the same reply): the
    SDK keeps no ids, so each gets ``call_<index>``."""
    deltas = []
    for index, call in enumerate(calls or (), start):
        call_id = getattr(call, "id", None)  # in case an SDK keeps the server's id
        deltas.append(
            ToolCallDelta(
                index=index,
                id=call_id if isinstance(call_id, str) and call_id else f"call_{index}",
                name=call.function.name,
                arguments=json.dumps(dict(call.function.arguments or {})),
            )
        )
    return tuple(deltas)


def _result(response: ollama.ChatResponse) -> ChatResult:
    """A whole reply; counts the server did not send stay ``None`` (``usage_reported=False``)."""
    return ChatResult(
        content=response.message.content or "",
        model=response.model or "",
        prompt_tokens=response.prompt_eval_count,
        completion_tokens=response.eval_count,
        finish_reason=response.done_reason,
        reasoning=response.message.thinking or "",
        tool_calls=_tool_calls(response.message.tool_calls, 0) if response.message.tool_calls else (),
    )


def _chunk(part: ollama.ChatResponse, calls: int = 0) -> ChatChunk:
    """One streamed NDJSON part; the last one (``done: true``) also says the model, the counts
    (``None`` when not sent) and why the reply ended. Tool calls come whole, in any part (a
    ``done: false`` one, as a rule); ``calls`` is how many came before in this reply."""
    message = part.message
    text, reasoning = message.content or "", message.thinking or ""
    tool_calls = _tool_calls(message.tool_calls, calls) if message.tool_calls else ()
    if not part.done:
        return ChatChunk(text=text, reasoning=reasoning, tool_calls=tool_calls)
    return ChatChunk(
        text=text,
        reasoning=reasoning,
        model=part.model or None,
        prompt_tokens=part.prompt_eval_count,
        completion_tokens=part.eval_count,
        finish_reason=part.done_reason,
        tool_calls=tool_calls,
    )


def _ended_early(host: str) -> ServerError:
    """A stream whose body ended cleanly but before Ollama's last part (``done: true``)."""
    return ServerError(
        f"Ollama at {host} ended the stream before the reply was complete (no final part). Try again; "
        "if it persists, check the Ollama server log or any proxy in between."
    )


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("ollama", OllamaBackend)
