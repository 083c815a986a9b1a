"""The example plugins, installed for real: a fresh virtual environment, ``pip install``, then
chatplug used from subprocesses with no code change, then ``pip uninstall``.

Everything installs offline. chatplug and the plugins are built into wheels from their source
trees (hatchling, without build isolation); chatplug's dependencies are packed back into wheels
from this test run's own environment. pip then resolves and installs chatplug's declared
dependencies from that folder with ``--no-index``, as it would from a registry.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import importlib.util
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

import pytest

import chatplug
import chatplug.testing
from chatplug._plugins import registry

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
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LLM_", "CHATPLUG_", "PYTHON", "PIP_", "OLLAMA_")) and k != "VIRTUAL_ENV"
        }
        self.env.update(
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
        import chatplug, importlib.metadata as md, json
        print(json.dumps({"file": chatplug.__file__,
                          "requires": sorted(md.distribution("chatplug").requires or []),
                          "dists": sorted(d.metadata["Name"].lower() for d in md.distributions())}))
        """
    )
    out = json.loads(proc.stdout)
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


def write_distribution(root: Path, module: str, source: str | None, entry: str) -> None:
    """A module and its dist-info in ``root``: an installed distribution, as importlib.metadata sees one."""
    if source is not None:
        (root / f"{module}.py").write_text(source)
    info = root / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[chatplug]\n{entry} = {module}\n")


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
    write_distribution(tmp_path, "chatplug_acme", files["chatplug_acme.py"], "acme")
    write_distribution(tmp_path, "chatplug_metrics", None, "metrics")  # its module: the example's source
    for name in ("test_acme.py", "test_metrics.py"):
        (tmp_path / name).write_text(files[name])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "CHATPLUG_", "ACME_", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(PLUGINS / "chatplug-metrics" / "src")])
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


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
    assert no_key.error_kind == "config" and "ACME_API_KEY" in str(no_key.error)
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
