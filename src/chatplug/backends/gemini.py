"""Google's Gemini API, natively, through the ``google-genai`` SDK (``pip install 'chatplug[gemini]'``).

Honours ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``, which the SDK prefers when both are set) and
``GEMINI_BASE_URL``; with ``GOOGLE_GENAI_USE_VERTEXAI=true``, Vertex AI as the SDK configures it
(``GOOGLE_CLOUD_PROJECT``, ``GOOGLE_CLOUD_LOCATION``, Application Default Credentials, or
a key in express mode). The SDK is imported on first use; its own retries stay
off (chatplug's retry policy applies) and its HTTP clients are chatplug's: sync calls end at the
call's deadline (``deadline_client``), async ones run on aiohttp.

The wire differs from chat completions in these ways, handled here:

- System messages become ``system_instruction``; ``assistant`` turns are ``model`` turns; tool
  results are ``function_response`` parts of a user turn, consecutive ones in one turn (parallel
  calls answered together), each named after the call it answers.
- Thinking: thought summaries (parts with ``thought: true``, sent when ``include_thoughts`` is on)
  become ``reasoning``, never ``content``. Gemini 3 takes a ``thinking_level``, 2.5 a
  ``thinking_budget`` in tokens; ``reasoning_effort`` is turned into whichever the model takes.
  Thinking tokens (``thoughtsTokenCount``) are billed as output: they count in
  ``completion_tokens`` and, apart, in ``reasoning_tokens``.
- Thought signatures: a part the model signed (``thoughtSignature``) is kept in ``thinking_blocks``
  as ``{"type": "thought_signature", "signature": ..., "tool_call_id": ...}`` (no ``tool_call_id``
  for a signed text part), and goes back on the same part of the turn when ``response.message``
  is sent again: Gemini 3 refuses a tool turn whose function calls lost their signatures.
- Tool calls without an id (Gemini 2.5 sends none) get one of chatplug's; it is sent back on the
  call and its response.
- Tools and structured output take JSON Schema (``parameters_json_schema``,
  ``response_json_schema``), in the subset Gemini takes: the constraints left out are said in a
  warning.
- Images are inline data; an image URL other than a ``data:`` URL is refused: chatplug sends no
  image URLs to Gemini, and fetches none itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from chatplug import (
    AuthenticationError,
    BadRequestError,
    ChatBackend,
    ChatChunk,
    ChatplugError,
    ChatRequest,
    ChatResult,
    ConfigError,
    InvalidInputError,
    InvalidResponseError,
    Message,
    ResponseFormat,
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
    env_url,
    first_within,
    freeze,
    import_sdk,
    invalid_response,
    status_error,
    supported_options,
    thaw,
    tls_context,
    transport_error,
)

from ._stainless import arguments_json, parts_of, text_of

logger = logging.getLogger("chatplug")

HOSTED_URL = "https://generativelanguage.googleapis.com"

HINTS: Mapping[int, str] = {
    400: "Check the request (model, options, tools).",
    401: "Check GEMINI_API_KEY (or GOOGLE_API_KEY, which wins when both are set).",
    403: "Check that the key may use this model (and that the API is enabled for its project).",
    404: "Check the model name {model!r} (LLM_MODEL_NAME or model_name=), e.g. gemini-3.8-flash.",
    429: "Wait and retry, or check the project's quota.",
    503: "Gemini is overloaded: retry later.",
}

#: Options Gemini's generation config takes, by chatplug's (OpenAI's) name: the config's name.
OPTIONS: Mapping[str, str] = {
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "safety_settings": "safety_settings",
    "cached_content": "cached_content",
    "media_resolution": "media_resolution",
}
#: Options read here, not passed as they are.
THINKING_OPTIONS = ("thinking_level", "thinking_budget", "include_thoughts", "reasoning_effort")
ACCEPTED = frozenset({*OPTIONS, *THINKING_OPTIONS, "stop"})

#: ``reasoning_effort`` as a Gemini 2.5 thinking budget, in tokens (Google's own mapping for its
#: OpenAI-compatible endpoint: ai.google.dev/gemini-api/docs/openai#thinking).
EFFORT_BUDGETS: Mapping[str, int] = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
#: ``reasoning_effort`` as a Gemini 3 thinking level (it has no "none": "minimal" is the least).
EFFORT_LEVELS: Mapping[str, str] = {
    "none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
}  # fmt: skip

#: Gemini 3's thinking levels (not every model takes all four: some refuse MINIMAL).
LEVELS = frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH"})

#: Gemini's finish reasons in chatplug's words; any other is passed on in lower case.
FINISH_REASONS: Mapping[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}

#: chatplug's tool choices as Gemini's function calling modes; any other choice is a tool's name.
TOOL_MODES: Mapping[str, str] = {"auto": "AUTO", "required": "ANY", "none": "NONE"}

#: The JSON Schema keywords Gemini takes in ``parameters_json_schema`` and ``response_json_schema``
#: (the ``Schema`` of googleapis' generativelanguage v1beta proto; ai.google.dev/gemini-api/docs/
#: structured-output), with its own ``propertyOrdering``. Others are left out before sending.
SUPPORTED = frozenset({
    "$id", "$defs", "$ref", "$anchor", "type", "format", "title", "description", "enum", "items",
    "prefixItems", "minItems", "maxItems", "minimum", "maximum", "anyOf", "oneOf", "properties",
    "additionalProperties", "required", "propertyOrdering",
})  # fmt: skip
#: Keywords that describe a value without constraining it: left out with a debug log only.
ANNOTATIONS = frozenset({
    "default", "examples", "$schema", "$comment", "deprecated", "readOnly", "writeOnly", "title", "description",
})  # fmt: skip
#: Keywords whose values are schemas, or maps or lists of schemas.
SUBSCHEMAS = frozenset({"items", "additionalProperties"})
SCHEMA_MAPS = frozenset({"properties", "$defs"})
SCHEMA_LISTS = frozenset({"prefixItems", "anyOf", "oneOf"})


class _Client(NamedTuple):
    """An SDK client, and the HTTP client its calls use (chatplug's to close)."""

    sdk: Any  # google.genai.Client
    http: Any  # httpx2's (or httpx's) Client or AsyncClient


@dataclass(frozen=True)
class Connection:
    """Where and as whom calls go, read from the environment at each call (never a key in repr)."""

    base_url: str | None  # GEMINI_BASE_URL; None: the SDK's default
    api_key: str | None
    vertex: bool
    where: str
    #: The version the API reference documents every method under, unless GOOGLE_GENAI_API_VERSION
    #: (the SDK's own variable) says another (v1 ...); Vertex AI's is the SDK's.
    api_version: str | None = "v1beta"
    #: Vertex AI's project and location, as the environment says them (the SDK reads them).
    place: tuple[str | None, str | None] = (None, None)

    def __repr__(self) -> str:
        return f"Connection(base_url={self.base_url!r}, vertex={self.vertex}, where={self.where!r})"


def connection() -> Connection:
    url = env_url("GEMINI_BASE_URL", HOSTED_URL)
    # GOOGLE_API_KEY first when both are set, as the SDK reads them (read both: both are masked).
    google_key, gemini_key = env_secret("GOOGLE_API_KEY"), env_secret("GEMINI_API_KEY")
    key = google_key or gemini_key
    if vertex_ai():  # the SDK reads its own variables: project, location, credentials, or a key
        where = f"Vertex AI at {url}" if url else "Vertex AI"
        place = (env_setting("GOOGLE_CLOUD_PROJECT"), env_setting("GOOGLE_CLOUD_LOCATION"))
        return Connection(url, key, True, where, env_setting("GOOGLE_GENAI_API_VERSION"), place)
    if not key:
        raise AuthenticationError(
            "GEMINI_API_KEY is not set. Set it to a Gemini API key (aistudio.google.com/apikey), or "
            "GOOGLE_GENAI_USE_VERTEXAI=true to use Vertex AI."
        )
    version = env_setting("GOOGLE_GENAI_API_VERSION") or "v1beta"
    return Connection(url, key, False, f"Gemini at {url}" if url else "Gemini", version)


def vertex_ai() -> bool:
    """Whether the SDK's variables ask for Vertex AI (``GOOGLE_GENAI_USE_ENTERPRISE``, its newer
    name, first), as it reads them."""
    for name in ("GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_USE_VERTEXAI"):
        value = env_setting(name)
        if value is not None:
            return value.lower() in ("true", "1")
    return False


class GeminiBackend(ChatBackend):
    #: Generally available since 2026-09-02 (the 2.5 models were shut down in October 2026).
    default_model = "gemini-3.8-flash"
    capabilities = frozenset({"tools", "images", "response_format"})
    bounds_deadline = True  # deadline_client and first_within

    def __init__(self) -> None:
        self._genai = import_sdk("google.genai", "gemini")
        self._errors: ModuleType = import_sdk("google.genai.errors", "gemini")
        self._pydantic = import_sdk("pydantic")
        # The HTTP stack the SDK is built on: httpx2 from google-genai 3.0 (Python 3.11+), httpx before.
        major = self._genai.__version__.split(".")[0]
        self._http = import_sdk("httpx2" if major.isdigit() and int(major) >= 3 else "httpx", "gemini")
        self._clients: ClientCache[_Client, _Client] = ClientCache(
            lambda conn, timeout: self._client(conn, timeout, sync=True),
            lambda conn, timeout: self._client(conn, timeout, sync=False),
            # The SDK leaves the HTTP clients it is given to their owner to close.
            close_sync=lambda client: client.http.close(),
            close_async=lambda client: client.http.aclose(),
        )

    def _client(self, conn: Connection, timeout: float, *, sync: bool) -> _Client:
        """A ``genai.Client`` on chatplug's HTTP clients: the SDK wants both a sync and an async
        one; the one its calls use is bounded as every backend's is (a sync client's sockets end
        at the call's deadline; an async one runs on aiohttp), the other is never used and holds
        nothing (its TLS context is the shared one)."""
        http, context = self._http, tls_context(self._http)
        if sync:
            used = sync_client = deadline_client(http.Client(timeout=timeout, verify=context))
            async_client = http.AsyncClient(timeout=timeout, verify=context)
        else:
            sync_client = http.Client(timeout=timeout, verify=context)
            # At most 1,000 connections, as the openai and anthropic SDKs allow (httpx's default, 100,
            # queued the rest: half the SDK's own throughput at concurrency 300, whose aiohttp has no cap).
            limits = http.Limits(max_connections=1000, max_keepalive_connections=100)
            transport = async_transport_options(http, limits=limits)
            used = async_client = http.AsyncClient(timeout=timeout, verify=context, limits=limits, **transport)
        options = self._genai.types.HttpOptions(
            base_url=conn.base_url,
            api_version=conn.api_version,
            timeout=round(timeout * 1000),  # milliseconds
            httpx_client=sync_client,
            httpx_async_client=async_client,
            async_client_args={"ssl": context},  # else the SDK makes its own TLS context (~50 ms) per client
        )
        try:
            if conn.vertex:  # the key (express mode), project and location as the SDK reads them
                return _Client(self._genai.Client(vertexai=True, http_options=options), used)
            return _Client(self._genai.Client(vertexai=False, api_key=conn.api_key, http_options=options), used)
        except Exception as exc:
            if _from_google_auth(exc):  # Vertex AI: no Application Default Credentials
                raise _credentials_error(exc, conn.where) from None
            if isinstance(exc, ValueError):  # Vertex AI without a project and location, or with a key too
                raise ConfigError(
                    f"the google-genai SDK cannot be configured for {conn.where}: {exc} (Vertex AI reads "
                    "GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION, or a key in GOOGLE_API_KEY)."
                ) from None
            raise

    def endpoint(self, request: ChatRequest) -> str:
        """Where calls go as they read it (the response cache keys on it): GEMINI_BASE_URL and the
        API version, or Vertex AI's project and location."""
        conn = connection()
        if conn.vertex:
            return f"vertex-ai:{conn.place[0] or ''}/{conn.place[1] or ''}@{conn.base_url or ''}"
        return f"{conn.base_url or HOSTED_URL}/{conn.api_version}"

    # -- calls ---------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> ChatResult:
        conn, arguments = connection(), self.arguments(request)
        with self._clients.sync(_key(conn, request), conn, request.timeout, credential=conn.api_key) as client:
            try:
                return _result(client.sdk.models.generate_content(**arguments))
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        conn, arguments = connection(), self.arguments(request)
        with self._clients.async_(_key(conn, request), conn, request.timeout, credential=conn.api_key) as client:
            try:
                return _result(await client.sdk.aio.models.generate_content(**arguments))
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """The reply as Gemini streams it (``:streamGenerateContent?alt=sse``), one chunk per event."""
        conn, arguments = connection(), self.arguments(request)
        with self._clients.sync(_key(conn, request), conn, request.timeout, credential=conn.api_key) as client:
            events = None
            try:
                events = client.sdk.models.generate_content_stream(**arguments)
                reader = _Reader()
                for event in first_within(events, request.deadline):
                    yield reader.read(event)
                reader.end(conn.where, streamed=True)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None
            finally:
                if events is not None:
                    events.close()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        conn, arguments = connection(), self.arguments(request)
        with self._clients.async_(_key(conn, request), conn, request.timeout, credential=conn.api_key) as client:
            events = None
            try:
                events = await client.sdk.aio.models.generate_content_stream(**arguments)
                reader = _Reader()
                async for event in events:
                    yield reader.read(event)
                reader.end(conn.where, streamed=True)
            except Exception as exc:
                raise self._mapped(exc, request, conn) from None
            finally:
                if events is not None:
                    await events.aclose()

    def close(self) -> None:
        self._clients.close()

    # -- the request ---------------------------------------------------------------------

    def arguments(self, request: ChatRequest) -> dict[str, Any]:
        """``generate_content``'s keyword arguments for ``request`` (checked before anything is sent)."""
        system, contents = to_contents(request.messages)
        options = supported_options(request, ACCEPTED)
        config: dict[str, Any] = {
            "temperature": request.temperature,
            "max_output_tokens": request.max_tokens,
            # The SDK would call Python functions itself; chatplug's tools are declarations only.
            "automatic_function_calling": {"disable": True},
        }
        config.update((OPTIONS[name], value) for name, value in options.items() if name in OPTIONS)
        if "stop" in options:
            config["stop_sequences"] = _stop_sequences(options["stop"])
        thinking = thinking_config(request.model, options)
        if thinking:
            config["thinking_config"] = thinking
        if system:
            config["system_instruction"] = system
        if request.tools:
            config["tools"] = [{"function_declarations": [function_declaration(tool) for tool in request.tools]}]
        if request.tool_choice is not None:
            config["tool_config"] = {"function_calling_config": _calling_config(request.tool_choice)}
        if request.response_format is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = _schema(request.response_format)
        return {"model": request.model, "contents": contents, "config": self._config(config)}

    def _config(self, config: dict[str, Any]) -> Any:
        """The SDK's ``GenerateContentConfig`` for ``config``: an option value it cannot take
        (``seed="abc"``) refused here, before anything is sent, and not retried."""
        try:
            return self._genai.types.GenerateContentConfig.model_validate(config)
        except self._pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()[:3])
            raise InvalidInputError(f"Gemini cannot take these options ({problems}).") from None

    # -- errors --------------------------------------------------------------------------

    def _mapped(self, exc: Exception, request: ChatRequest, conn: Connection) -> Exception:
        """The chatplug error for what the SDK raised; ``exc`` itself if it is no provider failure."""
        if isinstance(exc, ChatplugError):
            return exc
        if isinstance(exc, self._errors.APIError):
            return api_error(exc, request, conn.where)
        mapped = transport_error(exc, where=conn.where, timeout=request.timeout, setting="GEMINI_BASE_URL")
        if mapped is not None:
            return mapped
        if _from_google_auth(exc):  # Vertex AI's credentials, refreshed as a call is sent
            return _credentials_error(exc, conn.where)
        if isinstance(exc, (json.JSONDecodeError, RecursionError)):  # a body that is no JSON, or nested too deep
            return invalid_response(conn.where, exc)
        if isinstance(exc, (ValueError, KeyError, TypeError, binascii.Error)) and _from_sdk(exc):
            return InvalidResponseError(
                f"{conn.where} sent a reply chatplug could not read ({type(exc).__name__}: {exc})."
            )
        return exc


def _from_google_auth(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("google.auth")


def _credentials_error(exc: BaseException, where: str) -> AuthenticationError:
    return AuthenticationError(
        f"{where}: Google credentials could not be found or used ({exc}). Run `gcloud auth "
        "application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or GOOGLE_API_KEY for express mode."
    )


def _key(conn: Connection, request: ChatRequest) -> tuple[object, ...]:
    """What a client is made for (the key, its credential, is not part of it)."""
    return (conn.base_url, conn.vertex, conn.api_version, conn.place, request.timeout)


def _from_sdk(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside the SDK or pydantic (a reply it could not parse)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.startswith(("google.", "pydantic"))


def api_error(exc: Any, request: ChatRequest, where: str) -> ChatplugError:
    """An error answer (``{"error": {"code", "message", "status", "details"}}``) as chatplug's
    error: the status table, with what Google's details add (an invalid key is ``auth`` though
    it comes as HTTP 400; a quota's ``RetryInfo`` delay is ``retry_after``)."""
    status = exc.code if isinstance(exc.code, int) else 500
    body = exc.details if isinstance(exc.details, Mapping) else {"error": {"message": exc.message or str(exc)}}
    details = _details(body)
    reasons = {detail.get("reason") for detail in details}
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    hint = HINTS.get(status, "Retry later." if status >= 500 else "").format(model=request.model)
    if status == 400 and "API_KEY_INVALID" in reasons:  # an auth error, with the status Gemini sent
        said = status_error(status, body, where=where, headers=headers, hint=HINTS[401])
        return AuthenticationError(said.message, status_code=status)
    error = status_error(status, body, where=where, headers=headers, hint=hint)
    if error.retry_after is None:
        error.retry_after = _retry_delay(details)
    return error


def _details(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    error = body.get("error")
    details = error.get("details") if isinstance(error, Mapping) else None
    return [detail for detail in details or () if isinstance(detail, Mapping)]


def _retry_delay(details: list[Mapping[str, Any]]) -> float | None:
    """The ``retryDelay`` of a ``google.rpc.RetryInfo`` detail ("37s", "1.5s"), in seconds."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


# -- messages ------------------------------------------------------------------------------


def to_contents(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, Any]]]:
    """System messages joined into one instruction; the others as Gemini's contents, consecutive
    same-role turns merged into one (tool results, answering parallel calls, in one user turn)."""
    systems: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> the function's name, which a response must give
    for at, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            systems.append(text_of(message.get("content")))
            continue
        if role == "assistant":
            wire_role, parts = "model", _model_parts(message, names)
        elif role == "tool":
            wire_role, parts = "user", [_function_response(message, names, at)]
        else:
            wire_role, parts = "user", [_part(part, at) for part in parts_of(message.get("content"))]
        if not parts:  # an empty reply (cut off while thinking): Gemini refuses a turn without parts
            continue
        if contents and contents[-1]["role"] == wire_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": wire_role, "parts": parts})
    if not contents:
        raise InvalidInputError("Gemini needs at least one user message besides the system messages.")
    return "\n\n".join(systems), contents


def _model_parts(message: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant message as a model turn: its text, then its function calls (or the calls
    first, when the signed text part came after them), each signed part with the signature
    Gemini gave it (from ``thinking_blocks``), every signature kept."""
    blocks = [block for block in message.get("thinking_blocks") or () if block.get("type") == "thought_signature"]
    on_calls = {block["tool_call_id"]: block["signature"] for block in blocks if "tool_call_id" in block}
    on_text = [block for block in blocks if "tool_call_id" not in block]
    texts: list[dict[str, Any]] = []
    text = text_of(message.get("content"))
    if text or on_text:
        texts.append(_signed({"text": text}, on_text[0]["signature"] if on_text else None))
    texts += [_signed({"text": ""}, block["signature"]) for block in on_text[1:]]  # each its own part
    calls: list[dict[str, Any]] = []
    for call in message.get("tool_calls") or ():
        names[call["id"]] = call["name"]
        function_call = {"id": call["id"], "name": call["name"], "args": thaw(call["arguments"])}
        calls.append(_signed({"function_call": function_call}, on_calls.pop(call["id"], None)))
    if on_calls:
        warnings.warn(
            f"thought signatures for tool calls {sorted(on_calls)} are not sent: the message has no such tool "
            "calls (was response.message changed?).",
            stacklevel=2,
        )
    return calls + texts if on_text and on_text[0].get("after_tool_calls") else texts + calls


def _signed(part: dict[str, Any], signature: str | None) -> dict[str, Any]:
    if signature is not None:  # the SDK takes the bytes, and encodes them again
        part["thought_signature"] = _decoded(signature, "a thought_signature block's signature")
    return part


def _function_response(message: Message, names: Mapping[str, str], at: int) -> dict[str, Any]:
    call_id = message["tool_call_id"]
    name = message.get("name") or names.get(call_id)
    if name is None:
        raise InvalidInputError(
            f"messages[{at}] answers tool call {call_id!r}, which no earlier assistant message made: Gemini "
            "needs the name of the function a result answers."
        )
    parts = parts_of(message.get("content"))
    if any(part.get("type") != "text" for part in parts):
        raise InvalidInputError(f"messages[{at}]: Gemini takes only text in a tool result, not images.")
    return {"function_response": {"id": call_id, "name": name, "response": {"result": text_of(message.get("content"))}}}


def _part(part: Mapping[str, Any], at: int) -> dict[str, Any]:
    if part["type"] == "text":
        return {"text": part["text"]}
    url = part.get("url")
    if url is None:
        return {"inline_data": {"mime_type": part["media_type"], "data": _decoded(part["data"], f"messages[{at}]")}}
    if url.startswith("data:"):
        header, _, data = url[len("data:") :].partition(",")
        media_type, *params = header.split(";")
        if "base64" in params and media_type:
            return {"inline_data": {"mime_type": media_type, "data": _decoded(data, f"messages[{at}]'s data: URL")}}
        raise InvalidInputError(
            f"messages[{at}]: Gemini takes a data: URL image only base64-encoded (data:image/png;base64,..)."
        )
    raise InvalidInputError(
        f"messages[{at}]: the gemini backend sends images inline, and fetches no URL ({url[:80]!r}). Pass the "
        "image's bytes or its path, or a data: URL."
    )


def _decoded(data: str, what: str) -> bytes:
    """Base64 (standard, or URL-safe as the SDK writes it) as bytes; anything else refused."""
    try:
        return base64.b64decode(data, altchars=b"-_" if "-" in data or "_" in data else None, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"{what} is not base64 ({data[:40]!r}...).") from None


# -- tools, structured output, thinking ---------------------------------------------------


def function_declaration(tool: Tool) -> dict[str, Any]:
    schema = _checked(tool.schema(), f"tool {tool.name!r}")
    declaration: dict[str, Any] = {"name": tool.name, "parameters_json_schema": schema}
    if tool.description:
        declaration["description"] = tool.description
    return declaration


def _schema(response_format: ResponseFormat) -> dict[str, Any]:
    return _checked(response_format.json_schema(), f"response_format {response_format.name!r}")


def _checked(schema: dict[str, Any], what: str) -> dict[str, Any]:
    """``schema`` in the subset of JSON Schema Gemini takes: a ``const`` as a one-value ``enum``,
    every other keyword it does not take left out, and said: constraints (``pattern``,
    ``minLength`` ...) in a warning, since the model is no longer held to them (the pipeline
    still validates structured output against the whole schema); annotations (``default`` ...)
    at debug level."""
    dropped: set[str] = set()
    converted: dict[str, Any] = _subset(schema, dropped)
    constraints, annotations = sorted(dropped - ANNOTATIONS), sorted(dropped & ANNOTATIONS)
    if constraints:
        warnings.warn(
            f"{what}: Gemini takes no {', '.join(constraints)} in a schema; left out, so the model is not "
            "held to them.",
            stacklevel=4,
        )
    if annotations:
        logger.debug("%s: left out of the schema sent to Gemini: %s", what, ", ".join(annotations))
    return converted


def _subset(schema: object, dropped: set[str]) -> Any:
    if not isinstance(schema, Mapping):
        return schema  # true/false schemas
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if "$ref" in schema and not key.startswith("$"):
            # Beside a $ref Gemini takes only $ keywords: the description pydantic puts there goes.
            dropped.add(key)
        elif key == "const" and "enum" not in schema:
            kept["enum"] = [value]
        elif key not in SUPPORTED:
            dropped.add(key)
        elif key in SUBSCHEMAS:
            kept[key] = _subset(value, dropped)
        elif key in SCHEMA_MAPS and isinstance(value, Mapping):
            kept[key] = {name: _subset(inner, dropped) for name, inner in value.items()}
        elif key in SCHEMA_LISTS and isinstance(value, list):
            kept[key] = [_subset(inner, dropped) for inner in value]
        else:
            kept[key] = value
    return kept


def _calling_config(choice: str) -> dict[str, Any]:
    if choice in TOOL_MODES:
        return {"mode": TOOL_MODES[choice]}
    return {"mode": "ANY", "allowed_function_names": [choice]}


def generation(model: str) -> float | None:
    """The Gemini generation a model name says (``gemini-2.5-flash`` -> 2.5), or ``None``."""
    match = re.search(r"gemini-(\d+(?:\.\d+)?)", model)
    return float(match.group(1)) if match else None


def thinking_config(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``thinking_config`` the options ask for, as the model's generation takes it: Gemini 3
    a level, 2.5 a budget. Thought summaries are asked for whenever thinking is configured."""
    level, budget = options.get("thinking_level"), options.get("thinking_budget")
    effort, include = options.get("reasoning_effort"), options.get("include_thoughts")
    if level is None and budget is None and effort is None and include is None:
        return {}
    version = generation(model)
    if effort is not None:
        if level is not None or budget is not None:
            raise InvalidInputError("pass reasoning_effort or thinking_level/thinking_budget, not both.")
        if effort not in EFFORT_LEVELS:
            raise InvalidInputError(f"reasoning_effort must be one of {sorted(EFFORT_LEVELS)}, got {effort!r}.")
        if version is not None and version >= 3:
            level = EFFORT_LEVELS[effort]
        else:  # 2.5, or a name that does not say (gemini-flash-latest ...): a budget, which both take
            budget = EFFORT_BUDGETS[effort]
        if effort == "none" and include is None:
            include = False
    elif level is not None and budget is not None:
        raise InvalidInputError("pass thinking_level or thinking_budget, not both: Gemini refuses the two together.")
    config: dict[str, Any] = {}
    if level is not None:
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise InvalidInputError(f"thinking_level must be one of {sorted(LEVELS)}, got {level!r}.")
        if version is not None and version < 3:
            raise InvalidInputError(
                f"{model} takes thinking_budget (tokens; 0 turns thinking off, -1 lets the model decide), not "
                "thinking_level, which Gemini 3 models take."
            )
        config["thinking_level"] = str(level).upper()
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise InvalidInputError(f"thinking_budget must be a whole number of tokens, got {budget!r}.")
        config["thinking_budget"] = budget
    config["include_thoughts"] = bool(include) if include is not None else budget != 0
    return config


def _stop_sequences(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise InvalidInputError(f"stop must be a string or a list of strings, got {stop!r}.")


# -- the reply -------------------------------------------------------------------------------


def _signature(part: Any, call_id: str | None, *, after_calls: bool) -> Mapping[str, Any]:
    """The block keeping ``part``'s signature: on a function call, its id; on a text part that
    came after the turn's function calls (a stream's last, empty one), ``after_tool_calls``."""
    signature = base64.b64encode(part.thought_signature).decode()  # as on the wire
    block: dict[str, Any] = {"type": "thought_signature", "signature": signature}
    if call_id is not None:
        block["tool_call_id"] = call_id
    elif after_calls:
        block["after_tool_calls"] = True
    return freeze(block)  # type: ignore[no-any-return]


def _usage(response: Any) -> tuple[int | None, int | None, int | None]:
    """(prompt, completion, reasoning) tokens; thinking is output: it counts in the completion."""
    usage = response.usage_metadata
    if usage is None:
        return None, None, None
    thoughts = usage.thoughts_token_count or 0
    completion = (usage.candidates_token_count or 0) + thoughts
    return usage.prompt_token_count, completion, thoughts


def _blocked(response: Any) -> None:
    """A prompt Gemini refused to answer: no candidate, and why in ``promptFeedback``. A failure
    (``bad_request``, not retried) whose ``finish_reason`` is ``content_filter``."""
    feedback = response.prompt_feedback
    reason = getattr(feedback, "block_reason", None) if feedback is not None else None
    if reason is None:
        return
    said = getattr(reason, "value", reason)
    message = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
    raise BadRequestError(
        f"Gemini blocked the prompt ({said}{message}). Rephrase it, or change safety_settings=.",
        finish_reason="content_filter",
    )


class _Reader:
    """Replies read into chunks: a whole reply is one, a stream's events one each. The tool calls
    are numbered across a stream (each comes whole in one event); the usage is the latest said."""

    __slots__ = ("_calls", "_finished", "_produced", "_stopped")

    def __init__(self) -> None:
        self._calls = 0
        self._finished = False
        self._produced = False  # text or a tool call came
        self._stopped = ""  # why Gemini stopped the reply for safety ("SAFETY ..."), if it did

    def read(self, response: Any) -> ChatChunk:
        if not response.candidates:
            _blocked(response)
        prompt, completion, reasoning_tokens = _usage(response)
        chunk = ChatChunk(
            model=response.model_version or None,
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=reasoning_tokens,
        )
        if not response.candidates:
            return chunk
        candidate = response.candidates[0]
        chunk.finish_reason = self._finish(candidate)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        blocks: list[Mapping[str, Any]] = []
        unread: list[str] = []
        for part in (candidate.content.parts if candidate.content else None) or ():
            call_id = None
            if part.function_call is not None:
                call = part.function_call
                call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
                calls.append(ToolCallDelta(self._calls, call_id, call.name, arguments_json(call.args or {})))
                self._calls += 1
            elif part.thought:
                thoughts.append(part.text or "")
            elif part.text is not None:
                texts.append(part.text)
            else:
                unread.extend(
                    name for name, value in part if value is not None and name not in ("thought", "thought_signature")
                )
            if part.thought_signature:
                blocks.append(_signature(part, call_id, after_calls=call_id is None and self._calls > 0))
        if unread:
            logger.warning("Gemini's reply held parts chatplug does not read, left out: %s", ", ".join(unread))
        chunk.text, chunk.reasoning = "".join(texts), "".join(thoughts)
        chunk.tool_calls, chunk.thinking_blocks = tuple(calls), tuple(blocks)
        self._produced |= bool(chunk.text or calls)
        return chunk

    def _finish(self, candidate: Any) -> str | None:
        reason = getattr(candidate.finish_reason, "value", candidate.finish_reason)
        if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
            return None
        self._finished = True
        if FINISH_REASONS.get(reason) == "content_filter":
            self._stopped = f"{reason}: {candidate.finish_message}" if candidate.finish_message else str(reason)
            logger.warning("Gemini stopped the reply (%s)", self._stopped)
        return FINISH_REASONS.get(reason, str(reason).lower())

    def end(self, where: str, *, streamed: bool) -> None:
        """What the whole reply says once read: a stream that ended without a finish reason was
        cut off; a reply stopped for safety before any text is a refusal (a failure whose
        ``finish_reason`` is ``content_filter``, the reason in its error). One stopped after some
        text keeps it, with ``finish_reason`` ``content_filter`` and the reason logged."""
        if streamed and not self._finished:
            raise ServerError(
                f"{where} ended the stream before the reply was complete (no finish reason came). Try again."
            )
        if self._stopped and not self._produced:
            raise BadRequestError(
                f"Gemini stopped the reply before any text ({self._stopped}). Rephrase the request, or change "
                "safety_settings=.",
                finish_reason="content_filter",
            )


def _result(response: Any) -> ChatResult:
    if not response.candidates:
        _blocked(response)
        raise InvalidResponseError(
            "Gemini sent a reply with no candidate, and no promptFeedback.blockReason to say why."
        )
    reader = _Reader()
    chunk = reader.read(response)
    reader.end("Gemini", streamed=False)
    return ChatResult(
        content=chunk.text,
        model=chunk.model or "",
        prompt_tokens=chunk.prompt_tokens,
        completion_tokens=chunk.completion_tokens,
        finish_reason=chunk.finish_reason,
        reasoning=chunk.reasoning,
        tool_calls=chunk.tool_calls,
        thinking_blocks=chunk.thinking_blocks,
        reasoning_tokens=chunk.reasoning_tokens,
    )


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("gemini", GeminiBackend)
