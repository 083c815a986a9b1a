"""Plugin discovery through real entry points: distributions put on the path of a subprocess,
found by importlib.metadata exactly as a pip-installed plugin would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ECHO_PLUGIN = """
from chatplug import ChatBackend, ChatResult, hookimpl

class Echo(ChatBackend):
    def complete(self, request):
        return ChatResult(content="echo: " + request.messages[-1]["content"], model=request.model,
                          prompt_tokens=3, completion_tokens=2, finish_reason="stop")
    async def acomplete(self, request):
        return self.complete(request)

@hookimpl
def register_backends(register):
    register("echo", Echo)
"""

BROKEN_IMPORT = "raise ImportError('this plugin needs libfoo')\n"

TAKES_OLLAMA = """
from chatplug import hookimpl
@hookimpl
def register_backends(register):
    register("ollama", lambda: None)
"""

FACTORY_RAISES = """
from chatplug import hookimpl
def make():
    raise RuntimeError("no credentials file")
@hookimpl
def register_backends(register):
    register("fragile", make)
"""

RETURNS_GARBAGE = """
from chatplug import ChatBackend, hookimpl
class Garbage(ChatBackend):
    def complete(self, request):
        return {"content": "not a ChatResult"}
    async def acomplete(self, request):
        return None
@hookimpl
def register_backends(register):
    register("garbage", Garbage)
"""


def make_distribution(root: Path, dist: str, entry: str, source: str) -> None:
    """An installed distribution as importlib.metadata sees one: a module and its dist-info."""
    module = dist.replace("-", "_")
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[chatplug]\n{entry} = {module}\n")


def run(root: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "CHATPLUG_"))}
    environ.update(PYTHONPATH=str(root), **env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ, timeout=60
    )


CALL = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
import chatplug
out = {}
for name in sys.argv[1:] or ["echo"]:
    r = chatplug.generate_completion_sync("hello", backend=name)
    out[name] = {"success": r.success, "content": r.content, "error": r.error,
                 "kind": r.error_kind and r.error_kind.value, "tokens": r.tokens_used}
print(json.dumps(out))
"""


def call(root: Path, *backends: str, **env: str) -> tuple[dict[str, dict[str, object]], str]:
    argv = ", ".join(repr(b) for b in backends)
    proc = run(root, CALL.replace("sys.argv[1:]", f"[{argv}]"), **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    make_distribution(tmp_path, "chatplug-echo", "echo", ECHO_PLUGIN)
    return tmp_path


def test_entry_point_plugin_is_discovered_and_dispatched(plugins: Path) -> None:
    out, _ = call(plugins, "echo")
    assert out["echo"] == {"success": True, "content": "echo: hello", "error": None, "kind": None, "tokens": 5}


def test_llm_backend_env_selects_a_plugin(plugins: Path) -> None:
    proc = run(plugins, "import chatplug; print(chatplug.generate_completion_sync('hi').content)", LLM_BACKEND="echo")
    assert proc.stdout.strip() == "echo: hi", proc.stderr


def test_model_prefix_selects_a_plugin(plugins: Path) -> None:
    proc = run(
        plugins,
        "import chatplug; r = chatplug.generate_completion_sync('hi', 'echo:tiny'); print(r.backend, r.model_used)",
    )
    assert proc.stdout.split() == ["echo", "tiny"], proc.stderr


def test_import_loads_no_entry_point_and_no_sdk(plugins: Path) -> None:
    proc = run(
        plugins,
        """
        import sys, chatplug
        loaded = [m for m in ("chatplug_echo", "chatplug.backends.ollama", "ollama", "openai", "anthropic",
                              "httpx", "importlib.metadata") if m in sys.modules]
        print(loaded)
        chatplug.generate_completion_sync("hi", backend="echo")
        print("chatplug_echo" in sys.modules, "ollama" in sys.modules, "openai" in sys.modules)
    """,
    )
    assert proc.stdout.splitlines() == ["[]", "True False False"], proc.stderr


def test_plugin_that_fails_to_import(plugins: Path) -> None:
    make_distribution(plugins, "chatplug-broken", "broken", BROKEN_IMPORT)
    out, log = call(plugins, "echo", "broken")
    assert out["echo"]["success"] is True
    assert out["broken"]["kind"] == "config"
    assert "Installed backends:" in str(out["broken"]["error"])
    warnings = [line for line in log.splitlines() if "failed to load" in line and "'broken'" in line]
    assert len(warnings) == 1
    assert "chatplug-broken" in warnings[0] and "this plugin needs libfoo" in warnings[0]


def test_plugin_registering_a_taken_name(plugins: Path, closed_port: int) -> None:
    make_distribution(plugins, "chatplug-squatter", "squatter", TAKES_OLLAMA)
    out, log = call(plugins, "ollama", "echo", OLLAMA_HOST=f"127.0.0.1:{closed_port}")
    assert out["ollama"]["kind"] == "connection"  # still the built-in Ollama backend
    assert out["echo"]["success"] is True
    warnings = [line for line in log.splitlines() if "already registered" in line]
    assert len(warnings) == 1
    assert "'squatter'" in warnings[0] and "'ollama'" in warnings[0] and "chatplug" in warnings[0]


def test_factory_that_raises_on_first_use(plugins: Path) -> None:
    make_distribution(plugins, "chatplug-fragile", "fragile", FACTORY_RAISES)
    out, _ = call(plugins, "fragile", "echo")
    assert out["fragile"]["kind"] == "plugin"
    error = str(out["fragile"]["error"])
    assert "'fragile'" in error and "chatplug-fragile" in error and "no credentials file" in error
    assert out["echo"]["success"] is True


def test_backend_returning_garbage(plugins: Path) -> None:
    make_distribution(plugins, "chatplug-garbage", "garbage", RETURNS_GARBAGE)
    out, _ = call(plugins, "garbage", "echo")
    assert out["garbage"]["kind"] == "plugin"
    assert "chatplug-garbage" in str(out["garbage"]["error"]) and "not a chatplug.ChatResult" in str(
        out["garbage"]["error"]
    )
    assert out["echo"]["success"] is True


def test_chatplug_plugins_restricts_third_party_plugins(plugins: Path) -> None:
    make_distribution(plugins, "chatplug-fragile", "fragile", FACTORY_RAISES)
    proc = run(plugins, "import chatplug; print(chatplug.registry.names())", CHATPLUG_PLUGINS="echo")
    names = eval(proc.stdout)
    assert "echo" in names and "fragile" not in names
    assert "ollama" in names  # chatplug's own backends always load
    proc = run(plugins, "import chatplug; print(chatplug.registry.names())", CHATPLUG_PLUGINS="")
    assert "echo" not in eval(proc.stdout)


def test_cli_lists_backends_with_their_distribution(plugins: Path) -> None:
    proc = run(plugins, "import sys; from chatplug.cli import main; sys.exit(main(['backends']))")
    lines = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()}
    assert lines["echo"] == "chatplug-echo"
    assert lines["ollama"] == "chatplug"
