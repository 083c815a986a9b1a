"""The example plugins, installed for real: a fresh virtual environment, ``pip install``, then
chatplug used from subprocesses with no code change, then ``pip uninstall``.

Everything installs offline. chatplug and the plugins are built into wheels from their source
trees (hatchling, without build isolation); chatplug's dependencies are packed back into wheels
from this test run's own environment. pip then resolves and installs chatplug's declared
dependencies from that folder with ``--no-index``, as it would from a registry.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import csv
import dataclasses
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import venv
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

import chatplug
import chatplug.hookspecs
import chatplug.testing
import chatplug.toolkit
from chatplug import ChatRequest

from .childproc import clean_env, fake_distribution, run_pytest
from .fakeserver import FakeServer, Reply, fixture

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "examples" / "plugins"
GUIDE = ROOT / "docs" / "plugins.md"
BIN = "Scripts" if sys.platform == "win32" else "bin"
# Wheels from source trees, with the hatchling installed here: no network, no build isolation.
BUILD = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]


# -- a wheelhouse without a network ------------------------------------------------------


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    """The names of ``dist``'s unconditional requirements that apply to this interpreter."""
    from packaging.requirements import Requirement  # hatchling's dependency, so present here

    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(name: str) -> list[metadata.Distribution]:
    """The installed distributions ``name`` needs at run time, transitively (``name`` excluded)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = _requirement_names(metadata.distribution(name))
    while todo:
        key = _normalize(todo.pop())
        if key in seen:
            continue
        seen[key] = dist = metadata.distribution(key)
        todo.extend(_requirement_names(dist))
    return list(seen.values())


def wheel_from_installed(dist: metadata.Distribution, wheelhouse: Path) -> Path:
    """Pack an installed distribution back into the wheel it was installed from.

    The files come from its RECORD; its dist-info keeps the WHEEL file with the original tag.
    Scripts (outside site-packages) are left out: pip makes them again from the entry points.
    """
    files = [f for f in dist.files or [] if ".." not in f.parts and "__pycache__" not in f.parts]
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    wheel_meta = (dist.read_text("WHEEL") or "").splitlines()
    # All its tags, in the file name's compressed form: a universal wheel lists py2-none-any and
    # py3-none-any, and named by the first alone, pip on Python 3 would not take it.
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_meta if line.startswith("Tag:")]
    tag = "-".join(".".join(dict.fromkeys(parts)) for parts in zip(*tags, strict=True))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    target = wheelhouse / f"{name}-{dist.version}-{tag}.whl"
    skip = {f"{info_dir}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as whl:
        for file in files:
            arcname = file.as_posix()
            if arcname in skip:
                continue
            data = Path(str(dist.locate_file(file))).read_bytes()
            whl.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([arcname, f"sha256={digest}", len(data)])
        writer.writerow([f"{info_dir}/RECORD", "", ""])
        whl.writestr(f"{info_dir}/RECORD", record.getvalue())
    return target


# -- the environment ---------------------------------------------------------------------


class Venv:
    """A virtual environment, and subprocesses run in it as a user's shell would run them."""

    def __init__(self, path: Path, wheelhouse: Path) -> None:
        self.path = path
        self.wheelhouse = wheelhouse
        self.env = clean_env(
            "PIP_",
            "VIRTUAL_ENV",
            VIRTUAL_ENV=str(path),
            PATH=f"{path / BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PIP_NO_INPUT="1",
            PYTHONDONTWRITEBYTECODE="1",
        )

    def run(self, *argv: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.path / BIN / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.path,  # not the repository: nothing of it may be importable
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def python(self, code: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run("python", "-c", textwrap.dedent(code), check=check, **env)

    def pip_install(self, *names: str) -> None:
        self.run("python", "-m", "pip", "install", "-q", "--no-index", "--find-links", str(self.wheelhouse), *names)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A new venv with chatplug, chatplug-echo and chatplug-metrics pip-installed into it."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("building chatplug and the example plugins offline needs hatchling: pip install hatchling")
    root = tmp_path_factory.mktemp("plugin-package")
    wheelhouse = root / "wheelhouse"
    wheelhouse.mkdir()
    sources = [str(ROOT), str(PLUGINS / "chatplug-echo"), str(PLUGINS / "chatplug-metrics")]
    subprocess.run([*BUILD, "--wheel-dir", str(wheelhouse), *sources], check=True, capture_output=True)
    for dist in dependency_closure("chatplug"):
        wheel_from_installed(dist, wheelhouse)
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    env = Venv(root / "venv", wheelhouse)
    env.pip_install("chatplug", "chatplug-echo", "chatplug-metrics")
    yield env


# -- the tests ---------------------------------------------------------------------------


def test_chatplug_is_installed_for_real_with_its_dependencies(installed: Venv) -> None:
    proc = installed.python(
        """
        import sys, chatplug
        plugins_at_import = [m for m in ("chatplug_echo", "chatplug_metrics", "importlib.metadata") if m in sys.modules]
        import importlib.metadata as md, json
        print(json.dumps({"file": chatplug.__file__, "plugins_at_import": plugins_at_import,
                          "dists": sorted(d.metadata["Name"].lower() for d in md.distributions())}))
        """
    )
    out = json.loads(proc.stdout)
    assert out["plugins_at_import"] == []  # `import chatplug` loads no entry point, installed ones neither
    site = installed.path / "lib"
    assert Path(out["file"]).is_relative_to(site), out["file"]  # not this repository's source
    for dist in ("chatplug", "chatplug-echo", "chatplug-metrics", "pluggy", "httpx", "ollama", "pydantic"):
        assert dist in out["dists"]
    assert "openai" not in out["dists"]  # an extra, not asked for


def test_llm_backend_selects_the_installed_plugin(installed: Venv) -> None:
    proc = installed.python(
        """
        import asyncio, json, chatplug
        r = chatplug.generate_completion_sync("hello from the test")
        a = asyncio.run(chatplug.generate_completion_with_messages_async(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}], max_tokens=2))
        print(json.dumps([r.to_dict(), a.to_dict()]))
        """,
        LLM_BACKEND="echo",
    )
    sync, async_ = json.loads(proc.stdout)
    assert sync["success"] and sync["backend"] == "echo"
    assert sync["content"] == "hello from the test"
    assert (sync["model_used"], sync["prompt_tokens"], sync["completion_tokens"]) == ("echo-1", 4, 4)
    assert async_["content"] == "one two" and async_["finish_reason"] == "length"
    assert (async_["prompt_tokens"], async_["completion_tokens"], async_["tokens_used"]) == (5, 2, 7)


def test_cli_reaches_and_lists_the_plugin(installed: Venv) -> None:
    listing = installed.run("chatplug", "backends").stdout
    rows = dict(line.split() for line in listing.splitlines())
    assert rows["echo"] == "chatplug-echo"
    assert rows["ollama"] == "chatplug" and rows["testing"] == "chatplug"
    assert "metrics" not in rows  # it adds hooks, not a backend
    assert installed.run("chatplug", "--model", "echo:tiny", "what the CLI sent").stdout == "what the CLI sent\n"


def test_cli_lists_backends_as_json_as_the_guide_says(installed: Venv) -> None:
    listed = json.loads(installed.run("chatplug", "backends", "--json").stdout)
    assert all(set(row) == {"name", "plugin", "distribution"} for row in listed), listed
    assert [row["name"] for row in listed] == sorted(row["name"] for row in listed)
    rows = {row["name"]: row for row in listed}
    assert rows["echo"] == {"name": "echo", "plugin": "echo", "distribution": "chatplug-echo"}
    assert rows["ollama"] == {"name": "ollama", "plugin": "ollama", "distribution": "chatplug"}
    assert "metrics" not in rows


def test_metrics_plugin_counts_every_call(installed: Venv) -> None:
    proc = installed.python(
        """
        import asyncio, json, chatplug, chatplug_metrics
        chatplug.generate_completion_sync("one two three", backend="echo")
        asyncio.run(chatplug.generate_completion_async("four five", backend="echo"))
        chatplug.generate_completion_with_messages_sync([{"role": "system", "content": "no user"}], backend="echo")
        chatplug.generate_completion_sync("x", backend="nope")
        chatplug.generate_completion_sync("")
        print(json.dumps(chatplug_metrics.snapshot()))
        """
    )
    snap = json.loads(proc.stdout)
    echo = snap["echo"]
    assert (echo["requests"], echo["responses"], echo["successes"]) == (3, 3, 2)
    assert echo["failures"] == {"invalid_input": 1}
    assert (echo["prompt_tokens"], echo["completion_tokens"]) == (5, 5)
    assert 0 < echo["latency_max_s"] <= echo["latency_total_s"] < 5
    # Failed before a backend was chosen: counted, with no request seen.
    assert snap["-"] == {**snap["-"], "requests": 0, "responses": 2, "failures": {"config": 1, "invalid_input": 1}}


def metrics_from_source(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example metrics plugin, imported from its source file as a fresh module with counts
    of its own. Under a module name of its own too: were it ``chatplug_metrics``, an installed
    chatplug-metrics whose entry point loads later would load this very module."""
    path = PLUGINS / "chatplug-metrics" / "src" / "chatplug_metrics" / "__init__.py"
    spec = importlib.util.spec_from_file_location("chatplug_metrics_from_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_chatplug_plugins_can_leave_a_plugin_out(installed: Venv) -> None:
    proc = installed.python(
        """
        import json, chatplug, chatplug_metrics
        chatplug.generate_completion_sync("hi", backend="echo")
        print(json.dumps([chatplug_metrics.snapshot(), chatplug.backend_names()]))
        """,
        CHATPLUG_PLUGINS="echo",
    )
    snapshot, names = json.loads(proc.stdout)
    assert snapshot == {}  # the metrics plugin's hooks were never registered
    assert "echo" in names and "ollama" in names and "testing" in names


def test_uninstalled_plugin_is_gone_with_a_clear_error(installed: Venv) -> None:
    installed.run("python", "-m", "pip", "uninstall", "-y", "-q", "chatplug-echo")
    try:
        proc = installed.python(
            """
            import json, chatplug
            r = chatplug.generate_completion_sync("hi")
            print(json.dumps(r.to_dict()))
            """,
            LLM_BACKEND="echo",
        )
        failed = json.loads(proc.stdout)
        assert failed["success"] is False and failed["error_kind"] == "config"
        assert "No backend named 'echo'" in failed["error"]
        installed_list = failed["error"].split("Installed backends: ")[1].split(".")[0].split(", ")
        assert "ollama" in installed_list and "testing" in installed_list and "echo" not in installed_list
        cli = installed.run("chatplug", "hi", check=False, LLM_BACKEND="echo")
        assert cli.returncode == 1 and "Installed backends:" in cli.stderr
        assert "echo" not in installed.run("chatplug", "backends").stdout.split()
    finally:
        installed.pip_install("chatplug-echo")
    assert installed.run("chatplug", "hi again", LLM_BACKEND="echo").stdout == "hi again\n"


# -- the plugin guide's code, run -------------------------------------------------------


def guide_files() -> dict[str, str]:
    """The guide's code blocks that start with a file name comment (``# chatplug_acme.py``)."""
    blocks = re.findall(r"```(?:python|toml)\n# (\S+\.(?:py|toml))\n(.*?)```", GUIDE.read_text(), re.S)
    return dict(blocks)


def test_the_guides_minimal_plugin_installs_and_works(installed: Venv, tmp_path: Path) -> None:
    files = guide_files()
    for name in ("chatplug_parrot.py", "pyproject.toml"):
        (tmp_path / name).write_text(files[name])
    subprocess.run([*BUILD, "--wheel-dir", str(installed.wheelhouse), str(tmp_path)], check=True, capture_output=True)
    installed.pip_install("chatplug-parrot")
    try:
        rows = dict(line.split() for line in installed.run("chatplug", "backends").stdout.splitlines())
        assert rows["parrot"] == "chatplug-parrot"
        assert installed.run("chatplug", "hello you", LLM_BACKEND="parrot").stdout == "HELLO YOU\n"
        proc = installed.python(
            """
            import asyncio, chatplug
            r = asyncio.run(chatplug.generate_completion_async("quiet words", "parrot:parrot-2"))
            print(r.content, r.model_used, r.prompt_tokens, r.completion_tokens, r.backend)
            """
        )
        assert proc.stdout.split() == ["QUIET", "WORDS", "parrot-2", "2", "2", "parrot"]
    finally:
        installed.run("python", "-m", "pip", "uninstall", "-y", "-q", "chatplug-parrot")


def test_the_guides_plugin_tests_pass(tmp_path: Path) -> None:
    """The guide's "Testing a plugin" examples, run by pytest with the plugins installed."""
    files = guide_files()
    fake_distribution(tmp_path, "chatplug-acme", "acme", files["chatplug_acme.py"])
    fake_distribution(tmp_path, "chatplug-metrics", "metrics")  # its module: the example's source
    for name in ("test_acme.py", "test_metrics.py", "chatplug_calllog.py", "test_calllog.py"):  # calllog: not installed
        (tmp_path / name).write_text(files[name])
    assert run_pytest(tmp_path, PLUGINS / "chatplug-metrics" / "src") == 6


def guide_module(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import one of the guide's modules from its code block."""
    path = tmp_path / f"{name}.py"
    path.write_text(guide_files()[path.name])
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


ACME_KEY = "sk-acme-test-7c1e"  # distinct: a registered secret is masked process-wide


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The guide's Acme backend, registered in-process, and a fake Acme server for it."""
    chatplug.register_plugin(guide_module("chatplug_acme", tmp_path, monkeypatch), "acme")
    server = FakeServer(default_headers={"Content-Type": "application/json"})
    server.route("POST", "/v1/chat/completions", Reply(200, fixture("openai/chat_nonstream_200.json")))
    monkeypatch.setenv("ACME_BASE_URL", server.url)
    monkeypatch.setenv("ACME_API_KEY", ACME_KEY)
    yield server
    chatplug.unregister_plugin("acme")  # closes the backend, and so its clients
    server.close()


def test_the_guides_real_backend_keeps_the_deadline_with_its_own_clients(acme: FakeServer) -> None:
    """A server that drips its reply a byte at a time: the guide's backend ends at the deadline on
    its own sockets (deadline_client, so no worker thread), sync and async (on aiohttp)."""
    from chatplug._plugins import plugins

    acme.route("POST", "/v1/chat/completions", Reply(200, fixture("openai/chat_nonstream_200.json"), drip=0.2))
    sync = chatplug.generate_completion_sync("Hi", backend="acme", timeout=0.6, max_retries=0)
    assert "chatplug-attempt" not in {t.name for t in threading.enumerate()}  # it ran on the caller's thread
    assert sync.error_kind == "timeout", sync
    backend = plugins().backends.made("acme")
    assert backend is not None and type(backend).bounds_deadline

    async def main() -> tuple[chatplug.LLMResponse, str]:
        response = await chatplug.generate_completion_async("Hi", backend="acme", timeout=0.6, max_retries=0)
        with backend.clients.async_(acme.url, acme.url, ACME_KEY, credential=ACME_KEY) as client:
            return response, type(client._transport).__module__

    response, transport = asyncio.run(main())
    assert response.error_kind == "timeout", response
    assert transport == "chatplug._http.transports"  # aiohttp, from async_transport_options()


def test_the_guides_real_backend_sync_and_async(acme: FakeServer, chatplug_log: pytest.LogCaptureFixture) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Why is the sky blue?"}]
    sync = [
        chatplug.generate_completion_with_messages_sync(messages, temperature=0.1, backend="acme", seed=3, num_ctx=8),
        chatplug.generate_completion_sync("again", backend="acme"),
    ]

    async def two() -> list[chatplug.LLMResponse]:
        return [await chatplug.generate_completion_async("again", "acme:acme-large") for _ in range(2)]

    async_ = asyncio.run(two())
    for response in (*sync, *async_):
        assert response.success, response.error
        assert response.content == "Rayleigh scattering: air molecules scatter blue light more than red."
        assert (response.model_used, response.tokens_used, response.finish_reason) == (
            "gpt-4o-mini-2024-07-18",
            39,
            "stop",
        )
    first, _, third, _ = (r.json() for r in acme.requests)
    assert acme.requests[0].headers["Authorization"] == f"Bearer {ACME_KEY}"
    assert first == {"model": "acme-small", "messages": messages, "temperature": 0.1, "max_tokens": 500, "seed": 3}
    assert third["model"] == "acme-large" and third["messages"] == [{"role": "user", "content": "again"}]
    # One connection for the sync client's calls, one for the async client of the event loop.
    assert acme.connections == 2
    # num_ctx (an Ollama option) was left out, with a debug line saying so.
    assert "acme: num_ctx is not sent (Acme's API does not take it)" in chatplug_log.messages


@pytest.mark.parametrize(
    ("reply", "kind", "says"),
    [
        (Reply(429, b'{"error": "slow"}', {"Retry-After": "2"}), "rate_limit", "HTTP 429: slow."),
        (Reply(401, b'{"error": {"message": "bad key"}}'), "auth", "HTTP 401: bad key. Check ACME_API_KEY."),
        (Reply(404, b'{"error": "no such model"}'), "not_found", "Is 'acme-small' one of Acme's models?"),
        (Reply(400, b'{"error": "bad"}'), "bad_request", "HTTP 400: bad."),
        (Reply(400, b'{"error": "maximum context length is 8192 tokens"}'), "context_length", "HTTP 400"),
        (Reply(500, b"internal error"), "server", "internal error"),
        (Reply(503, b"upstream down"), "overloaded", "upstream down"),
        (Reply(200, b"<html>a proxy page</html>"), "server", "could not read (JSONDecodeError"),
        (Reply(200, b'{"choices": []}'), "server", "could not read (IndexError"),
    ],
)
def test_the_guides_real_backend_maps_errors(acme: FakeServer, reply: Reply, kind: str, says: str) -> None:
    acme.route("POST", "/v1/chat/completions", reply)
    for response in (
        chatplug.generate_completion_sync("hi", backend="acme"),
        asyncio.run(chatplug.generate_completion_async("hi", backend="acme")),
    ):
        assert (response.success, response.error_kind) == (False, kind)
        assert response.error is not None and response.error.startswith(f"acme: Acme at {acme.url}"), response.error
        assert says in response.error, response.error
        assert response.retry_after == (2.0 if kind == "rate_limit" else None)


def test_the_guides_real_backend_transport_and_config_errors(
    acme: FakeServer, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "0.3")
    acme.route("POST", "/v1/chat/completions", Reply(hang=True))
    timed_out = chatplug.generate_completion_sync("hi", backend="acme")
    assert timed_out.error_kind == "timeout" and "within 0.3 s" in str(timed_out.error)
    monkeypatch.setenv("ACME_BASE_URL", f"http://127.0.0.1:{closed_port}")
    refused = asyncio.run(chatplug.generate_completion_async("hi", backend="acme"))
    assert refused.error_kind == "connection" and "ACME_BASE_URL" in str(refused.error)
    sent = len(acme.requests)
    for url in ("127.0.0.1:8080", "ftp://127.0.0.1", "http://127.0.0.1:99999", "http:// spaced.example"):
        monkeypatch.setenv("ACME_BASE_URL", url)
        bad_url = chatplug.generate_completion_sync("hi", backend="acme")
        assert bad_url.error_kind == "config" and "ACME_BASE_URL" in str(bad_url.error), (url, bad_url.error)
    monkeypatch.setenv("ACME_BASE_URL", acme.url)
    monkeypatch.setenv("ACME_API_KEY", "sk-with a space")
    bad_key = chatplug.generate_completion_sync("hi", backend="acme")
    assert bad_key.error_kind == "config" and "ACME_API_KEY" in str(bad_key.error)
    assert "with a space" not in str(bad_key.error)
    monkeypatch.delenv("ACME_API_KEY")
    no_key = chatplug.generate_completion_sync("hi", backend="acme")
    assert no_key.error_kind == "auth" and "ACME_API_KEY" in str(no_key.error)
    assert len(acme.requests) == sent  # none of these sent anything


def test_the_guides_real_backend_never_leaks_its_key(
    acme: FakeServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, closed_port: int
) -> None:
    """A provider that echoes the key in its 401 body: the key is in no error, repr or log line
    of chatplug's. Nor is the password of a base URL (``http://user:password@host``)."""
    caplog.set_level(logging.DEBUG, logger="chatplug")
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {ACME_KEY}."}}).encode()
    acme.route("POST", "/v1/chat/completions", Reply(401, echo))
    responses = [
        chatplug.generate_completion_sync("hi", backend="acme"),
        asyncio.run(chatplug.generate_completion_async("hi", backend="acme")),
    ]
    assert acme.requests[0].headers["Authorization"] == f"Bearer {ACME_KEY}"  # it was sent, and echoed
    for response in responses:
        assert response.error_kind == "auth" and "Incorrect API key provided: ***." in str(response.error)
    password = "pw-acme-test-51d0"
    monkeypatch.setenv("ACME_BASE_URL", f"http://user:{password}@127.0.0.1:{closed_port}")
    refused = chatplug.generate_completion_sync("hi", backend="acme")
    assert refused.error_kind == "connection"
    assert f"Acme at http://user:***@127.0.0.1:{closed_port}" in str(refused.error)
    for response in (*responses, refused):
        exc = response.exception
        assert exc is not None and exc.__cause__ is None and exc.__context__ is None
        seen = [str(response.error), repr(response), repr(exc), str(exc), json.dumps(response.to_dict())]
        # chatplug's log lines (httpx's own INFO line shows each request's URL, password and all).
        seen += [record.getMessage() for record in caplog.records if record.name.startswith("chatplug")]
        for text in seen:
            assert ACME_KEY not in text and password not in text, text


class HeldAcme:
    """A fake Acme whose answer to ``held_key`` waits until the test opens ``gate``; it records
    the key of each request, and notes when the client closes a connection that used ``held_key``."""

    def __init__(self, held_key: str) -> None:
        self.keys: list[str] = []
        self.arrived, self.gate, self.held_closed = threading.Event(), threading.Event(), threading.Event()
        self.connections = 0
        body = fixture("openai/chat_nonstream_200.json")
        acme = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a connection ends when the client closes it
            key = ""

            def setup(self) -> None:
                super().setup()
                acme.connections += 1

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.key = self.headers["Authorization"].removeprefix("Bearer ")
                acme.keys.append(self.key)
                if self.key == held_key:
                    acme.arrived.set()
                    acme.gate.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def finish(self) -> None:
                super().finish()
                if self.key == held_key:
                    acme.held_closed.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_guides_real_backend_takes_a_rotated_key_mid_flight(
    acme: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key changes while a request is in flight: the next request uses the new key (on a
    new client); the one in flight completes on the old client, which is closed after it."""
    old_key, new_key = "sk-acme-old-2b7d", "sk-acme-new-9e4a"
    held = HeldAcme(held_key=old_key)
    monkeypatch.setenv("ACME_BASE_URL", held.url)
    monkeypatch.setenv("ACME_API_KEY", old_key)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(chatplug.generate_completion_sync, "first", backend="acme")
            assert held.arrived.wait(30)
            monkeypatch.setenv("ACME_API_KEY", new_key)
            rotated = chatplug.generate_completion_sync("second", backend="acme")
            assert rotated.success, rotated.error
            assert not in_flight.done() and not held.held_closed.is_set()
            held.gate.set()
            first = in_flight.result(timeout=30)
        assert first.success, first.error
        assert held.held_closed.wait(30)  # the old client, closed once its last request returned
        again = chatplug.generate_completion_sync("third", backend="acme")
        assert again.success, again.error
        assert held.keys == [old_key, new_key, new_key]
        assert held.connections == 2  # the third call reused the new client's connection
    finally:
        held.close()


def test_the_guides_real_backend_after_close(acme: FakeServer) -> None:
    """chatplug.close() closes the backend; the next call makes a new one, with new clients."""
    assert chatplug.generate_completion_sync("hi", backend="acme").success
    assert chatplug.generate_completion_sync("hi", backend="acme").success
    assert acme.connections == 1
    chatplug.close()
    after = chatplug.generate_completion_sync("hi", backend="acme")
    assert after.success, after.error
    assert acme.connections == 2


def test_a_backend_without_default_model_needs_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the guide says of default_model: without it, a call naming no model sends nothing."""
    made: list[ChatRequest] = []

    class NoDefault(chatplug.ChatBackend):
        def complete(self, request: ChatRequest) -> chatplug.ChatResult:
            made.append(request)
            return chatplug.ChatResult(content="ok", model=request.model)

        async def acomplete(self, request: ChatRequest) -> chatplug.ChatResult:
            return self.complete(request)

    class Plugin:
        @chatplug.hookimpl
        def register_backends(self, register: Any) -> None:
            register("nodefault", NoDefault)

    monkeypatch.delenv("LLM_MODEL_NAME", raising=False)
    name = chatplug.register_plugin(Plugin(), "nodefault-plugin")
    try:
        failed = chatplug.generate_completion_sync("hi", backend="nodefault")
        named = chatplug.generate_completion_sync("hi", model_name="nodefault:m1")
    finally:
        chatplug.unregister_plugin(name)
    assert failed.error_kind == "invalid_input" and "LLM_MODEL_NAME" in str(failed.error)
    assert named.success and [r.model for r in made] == ["m1"]


def test_the_guides_chat_request_defaults() -> None:
    """ChatRequest(messages=..., model=...) as the guide builds one: every other field the
    settings' default, and read-only all the way down (thaw gives plain data back)."""
    messages = [{"role": "user", "content": "Hi"}]
    request = ChatRequest(messages=messages, model="acme-small", options={"stop": ["\n"]})  # type: ignore[arg-type]
    assert (request.temperature, request.max_tokens, request.timeout, request.max_retries, request.backend) == (
        0.7,
        500,
        120,
        2,
        "",
    )
    assert dict(ChatRequest(messages=(), model="m").options) == {}
    with pytest.raises(TypeError):
        request.messages[0]["content"] = "changed"  # type: ignore[index]
    messages[0]["content"] = "changed"  # a copy: the caller's list is not the request's
    assert chatplug.toolkit.thaw(request.messages) == [{"role": "user", "content": "Hi"}]
    assert json.dumps(chatplug.toolkit.thaw(request.options)) == '{"stop": ["\\n"]}'


def test_the_guides_logging_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatplug.calls")
    chatplug.register_plugin(guide_module("chatplug_calllog", tmp_path, monkeypatch), "calllog")
    try:
        with chatplug.testing.scripted("four words of reply", chatplug.RateLimitError("busy")):
            chatplug.generate_completion_sync("two words")
            chatplug.generate_completion_sync("again")
        chatplug.generate_completion_sync("")
    finally:
        chatplug.unregister_plugin("calllog")
    lines = [r.getMessage() for r in caplog.records if r.name == "chatplug.calls"]
    assert len(lines) == 3
    assert re.fullmatch(r"testing testing: ok in \d+ ms, 6 tokens", lines[0]), lines[0]
    assert re.fullmatch(r"testing testing: rate_limit in \d+ ms, 0 tokens", lines[1]), lines[1]
    assert lines[2].startswith("- -: invalid_input in ")


def test_the_guides_streaming_plugin_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chatplug.register_plugin(guide_module("chatplug_ticker", tmp_path, monkeypatch), "ticker")
    try:
        with chatplug.stream_completion_sync("one two three", backend="ticker") as stream:
            assert [chunk.text for chunk in stream] == ["one", " two", " three"]
        assert (stream.response.content, stream.response.tokens_used) == ("one two three", 6)

        async def astream() -> list[str]:
            async with chatplug.stream_completion_async("a b", backend="ticker") as chunks:
                return [chunk.text async for chunk in chunks]

        assert asyncio.run(astream()) == ["a", " b"]
        with chatplug.stream_completion_sync("one two three", backend="ticker") as stopped:
            for _chunk in stopped:
                break
        assert (stopped.response.content, stopped.response.finish_reason) == ("one", "cancelled")
    finally:
        chatplug.unregister_plugin("ticker")


# -- the plugin guide says what chatplug does ------------------------------------------

# The guide's files, each written out and run by a test: in this module, and agent.py,
# test_agent.py and conftest.py in test_testing.py. A new file in the guide must join a test.
GUIDE_FILES_RUN = {
    "chatplug_parrot.py",
    "pyproject.toml",
    "chatplug_acme.py",
    "chatplug_calllog.py",
    "chatplug_ticker.py",
    "test_acme.py",
    "test_metrics.py",
    "test_calllog.py",
    "agent.py",
    "test_agent.py",
    "conftest.py",
}


def guide_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)


def guide_table(header: str) -> list[tuple[str, ...]]:
    """The rows (as cells) of the guide's table whose header row is ``header``."""
    text = GUIDE.read_text()
    table = text[text.index(f"\n{header}\n") :].split("\n\n")[0]
    return [tuple(cell.strip() for cell in row.strip("|").split(" | ")) for row in table.strip().splitlines()[2:]]


def test_every_file_in_the_guide_is_run_by_a_test() -> None:
    named = re.findall(r"```(?:python|toml)\n# (\S+\.(?:py|toml))\n", GUIDE.read_text())
    assert len(named) == len(set(named)), "two blocks of the guide write the same file"
    assert set(named) == GUIDE_FILES_RUN


def test_the_guides_sketches_match_chatplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocks that are no file (the protocol and the observability hooks) are chatplug's own
    signatures, and so is the guide's register_backends."""
    protocol, hooks = (b for b in guide_blocks("python") if not b.startswith("# "))
    names: dict[str, Any] = {"ABC": abc.ABC, "ClassVar": ClassVar, "hookimpl": chatplug.hookimpl}
    exec("from __future__ import annotations\n" + protocol + hooks, names)
    real_hooks = {name: getattr(chatplug.hookspecs, name) for name in ("on_request", "on_response")}
    methods = ("complete", "acomplete", "stream", "astream", "close")
    real_methods = {name: getattr(chatplug.ChatBackend, name) for name in methods}
    for name, real in [*real_hooks.items(), *real_methods.items()]:
        sketch = names[name] if name in real_hooks else getattr(names["ChatBackend"], name)
        assert str(inspect.signature(sketch)) == str(inspect.signature(real)), name
        is_async = inspect.iscoroutinefunction(real) or inspect.isasyncgenfunction(real)
        assert inspect.iscoroutinefunction(sketch) == is_async, name
    assert names["ChatBackend"].default_model is chatplug.ChatBackend.default_model is None
    parrot = guide_module("chatplug_parrot", tmp_path, monkeypatch)
    spec = chatplug.hookspecs.register_backends
    assert str(inspect.signature(parrot.register_backends)) == str(inspect.signature(spec))


def test_the_guides_tables_match_chatplug() -> None:
    def fields(header: str) -> set[str]:
        return {name for row in guide_table(header) for name in re.findall(r"`(\w+)`", row[0])}

    assert fields("| field | what it holds |") == {f.name for f in dataclasses.fields(chatplug.ChatRequest)}
    assert fields("| field | what to put there |") == {f.name for f in dataclasses.fields(chatplug.ChatResult)}
    errors = guide_table("| the failure | raise | the caller's `error_kind` |")
    for failure, raise_, kind in errors:
        exception = getattr(chatplug, re.findall(r"`(\w+)`", raise_)[0])
        assert issubclass(exception, chatplug.ChatplugError), failure
        assert f"`{exception.kind.value}`" == kind, failure
    assert {kind.strip("`") for *_, kind in errors} == {k.value for k in chatplug.ErrorKind} - {"plugin"}
