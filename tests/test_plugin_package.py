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
import venv
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

import chatplug
import chatplug.hookspecs
import chatplug.testing
from chatplug._plugins import registry

from .childproc import clean_env, fake_distribution, run_pytest
from .fakeserver import FakeServer, Reply, fixture

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "examples" / "plugins"
GUIDE = ROOT / "examples" / "PLUGINS.md"
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
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta if line.startswith("Tag:"))
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


def test_chatplug_plugins_can_leave_a_plugin_out(installed: Venv) -> None:
    proc = installed.python(
        """
        import json, chatplug, chatplug_metrics
        chatplug.generate_completion_sync("hi", backend="echo")
        print(json.dumps([chatplug_metrics.snapshot(), chatplug.registry.names()]))
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
    for name in ("test_acme.py", "test_metrics.py"):
        (tmp_path / name).write_text(files[name])
    assert run_pytest(tmp_path, PLUGINS / "chatplug-metrics" / "src") == 3


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


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    """The guide's Acme backend, registered in-process, and a fake Acme server for it."""
    registry.register_plugin(guide_module("chatplug_acme", tmp_path, monkeypatch), "acme", "chatplug-acme")
    server = FakeServer(default_headers={"Content-Type": "application/json"})
    server.route("POST", "/v1/chat/completions", Reply(200, fixture("openai/chat_nonstream_200.json")))
    monkeypatch.setenv("ACME_BASE_URL", server.url)
    monkeypatch.setenv("ACME_API_KEY", "sk-test")
    yield server
    registry.unregister_plugin("acme")
    server.close()


def test_the_guides_real_backend_sync_and_async(acme: FakeServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Why is the sky blue?"}]
    sync = chatplug.generate_completion_with_messages_sync(messages, temperature=0.1, backend="acme", seed=3)
    async_ = asyncio.run(chatplug.generate_completion_async("again", "acme:acme-large"))
    for response in (sync, async_):
        assert response.success, response.error
        assert response.content == "Rayleigh scattering: air molecules scatter blue light more than red."
        assert (response.model_used, response.tokens_used, response.finish_reason) == (
            "gpt-4o-mini-2024-07-18",
            39,
            "stop",
        )
    first, second = (r.json() for r in acme.requests)
    assert acme.requests[0].headers["Authorization"] == "Bearer sk-test"
    assert first == {"model": "acme-small", "messages": messages, "temperature": 0.1, "max_tokens": 500, "seed": 3}
    assert second["model"] == "acme-large" and second["messages"] == [{"role": "user", "content": "again"}]
    assert acme.connections == 2  # the sync client's connection is reused; each async call opens one


@pytest.mark.parametrize(
    ("reply", "kind", "says"),
    [
        (Reply(429, b'{"error": "slow"}', {"Retry-After": "2"}), "rate_limit", "rate limit"),
        (Reply(401, b'{"error": "bad key"}'), "auth", "HTTP 401"),
        (Reply(404, b'{"error": "no such model"}'), "not_found", "'acme-small'"),
        (Reply(400, b'{"error": "bad"}'), "bad_request", "HTTP 400"),
        (Reply(500, b"internal error"), "server", "internal error"),
        (Reply(503, b"upstream down"), "overloaded", "upstream down"),
        (Reply(200, b"<html>a proxy page</html>"), "server", "not a chat completion"),
        (Reply(200, b'{"choices": []}'), "server", "not a chat completion"),
    ],
)
def test_the_guides_real_backend_maps_errors(acme: FakeServer, reply: Reply, kind: str, says: str) -> None:
    acme.route("POST", "/v1/chat/completions", reply)
    for response in (
        chatplug.generate_completion_sync("hi", backend="acme"),
        asyncio.run(chatplug.generate_completion_async("hi", backend="acme")),
    ):
        assert (response.success, response.error_kind) == (False, kind)
        assert response.error is not None and response.error.startswith("acme: ") and says in response.error
        assert response.retry_after == (2.0 if kind == "rate_limit" else None)


def test_the_guides_real_backend_transport_and_config_errors(
    acme: FakeServer, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    monkeypatch.setenv("LLM_TIMEOUT", "0.3")
    acme.route("POST", "/v1/chat/completions", Reply(hang=True))
    timed_out = chatplug.generate_completion_sync("hi", backend="acme")
    assert timed_out.error_kind == "timeout" and "0.3 s" in str(timed_out.error)
    monkeypatch.setenv("ACME_BASE_URL", f"http://127.0.0.1:{closed_port}")
    refused = asyncio.run(chatplug.generate_completion_async("hi", backend="acme"))
    assert refused.error_kind == "connection" and "ACME_BASE_URL" in str(refused.error)
    monkeypatch.delenv("ACME_API_KEY")
    sent = len(acme.requests)
    no_key = chatplug.generate_completion_sync("hi", backend="acme")
    assert no_key.error_kind == "auth" and "ACME_API_KEY" in str(no_key.error)
    assert len(acme.requests) == sent


def test_the_guides_logging_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatplug.calls")
    registry.register_plugin(guide_module("chatplug_calllog", tmp_path, monkeypatch), "calllog")
    try:
        with chatplug.testing.scripted("four words of reply", chatplug.RateLimitError("busy")):
            chatplug.generate_completion_sync("two words")
            chatplug.generate_completion_sync("again")
        chatplug.generate_completion_sync("")
    finally:
        registry.unregister_plugin("calllog")
    lines = [r.getMessage() for r in caplog.records if r.name == "chatplug.calls"]
    assert len(lines) == 3
    assert re.fullmatch(r"testing testing: ok in \d+ ms, 6 tokens", lines[0]), lines[0]
    assert re.fullmatch(r"testing testing: rate_limit in \d+ ms, 0 tokens", lines[1]), lines[1]
    assert lines[2].startswith("- -: invalid_input in ")


# -- the plugin guide says what chatplug does ------------------------------------------

# The guide's files, each written out and run by a test: in this module, and agent.py,
# test_agent.py and conftest.py in test_testing.py. A new file in the guide must join a test.
GUIDE_FILES_RUN = {
    "chatplug_parrot.py",
    "pyproject.toml",
    "chatplug_acme.py",
    "chatplug_calllog.py",
    "test_acme.py",
    "test_metrics.py",
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
    real_methods = {name: getattr(chatplug.ChatBackend, name) for name in ("complete", "acomplete", "close")}
    for name, real in [*real_hooks.items(), *real_methods.items()]:
        sketch = names[name] if name in real_hooks else getattr(names["ChatBackend"], name)
        assert str(inspect.signature(sketch)) == str(inspect.signature(real)), name
        assert inspect.iscoroutinefunction(sketch) == inspect.iscoroutinefunction(real), name
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
