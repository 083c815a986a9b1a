"""Plugin discovery through real entry points, and every way a plugin can fail.

Each test puts distributions on the path of a child process, where importlib.metadata finds
them exactly as it finds a pip-installed plugin. A broken plugin must give one clear message
naming it, and every other backend must keep working, sync and async.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import chatplug

from .childproc import fake_distribution, python


def backend_plugin(name: str, sync: str, async_: str | None = None) -> str:
    """A plugin registering backend ``name``, whose ``complete`` returns the expression ``sync``
    and ``acomplete`` the expression ``async_`` (else ``sync``), both of ``request``."""
    return f"""
from chatplug import ChatBackend, ChatResult, hookimpl
class Backend(ChatBackend):
    default_model = "{name}-1"
    def complete(self, request):
        return {sync}
    async def acomplete(self, request):
        return {async_ or sync}
@hookimpl
def register_backends(register):
    register({name!r}, Backend)
"""


def registering(line: str, before: str = "") -> str:
    """A plugin whose ``register_backends`` runs ``line``, after the module's code ``before``."""
    return f"import chatplug\n{before}\n@chatplug.hookimpl\ndef register_backends(register):\n    {line}\n"


ECHO_PLUGIN = backend_plugin("echo", 'ChatResult("echo: " + request.messages[-1]["content"], request.model, 3, 2)')
BROKEN_IMPORT = "raise ImportError('this plugin needs libfoo')\n"
REGISTER_RAISES = registering('raise KeyError("no config section [clumsy]")')
TAKES_OLLAMA = registering('register("ollama", lambda: None)')
TAKES_ECHO = backend_plugin("echo", 'ChatResult("the other echo", request.model)')
FACTORY_RAISES = registering('register("fragile", lambda: open("/no/credentials/file"))')
FACTORY_SAYS_WHY = registering(
    'register("keyed", need_key)',
    before='def need_key():\n    raise chatplug.ConfigError("set KEYED_API_KEY to your key")',
)
FACTORY_MAKES_NO_BACKEND = registering('register("confused", dict)')
RETURNS_GARBAGE = backend_plugin("garbage", '{"content": "not a ChatResult"}', "None")
RAISES_A_BUG = backend_plugin("buggy", "request.messages[5]")
CONTOSO = backend_plugin("contoso", 'ChatResult("contoso", request.model)')
BAD_RESULT_FIELDS = backend_plugin(
    "sloppy",
    "ChatResult(content=None, model=request.model, prompt_tokens=None)",
    'ChatResult(content=3, model=request.model, completion_tokens="2")',
)

# Every broken plugin above, by distribution name: (entry point, source).
BROKEN = {
    "chatplug-broken": ("broken", BROKEN_IMPORT),
    "chatplug-clumsy": ("clumsy", REGISTER_RAISES),
    "chatplug-squatter": ("squatter", TAKES_OLLAMA),
    "chatplug-fragile": ("fragile", FACTORY_RAISES),
    "chatplug-keyed": ("keyed", FACTORY_SAYS_WHY),
    "chatplug-confused": ("confused", FACTORY_MAKES_NO_BACKEND),
    "chatplug-garbage": ("garbage", RETURNS_GARBAGE),
    "chatplug-buggy": ("buggy", RAISES_A_BUG),
}

# Calls each backend twice, sync then async, and prints what each call returned. Warnings go to
# stderr, one per line, so a test can count them.
CALL = """
import asyncio, json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
import chatplug

def row(r):
    return {"success": r.success, "content": r.content, "error": r.error,
            "kind": r.error_kind and r.error_kind.value, "tokens": r.tokens_used}

out = {}
for name in BACKENDS:
    out[name] = [row(chatplug.generate_completion_sync("hello", backend=name)),
                 row(asyncio.run(chatplug.generate_completion_async("hello", backend=name)))]
print(json.dumps(out))
"""

Row = dict[str, Any]

LIST_BACKENDS = "import sys; from chatplug.cli import main; sys.exit(main(['backends']))"  # `chatplug backends`


def call(
    root: Path | list[Path], *backends: str, before: str = "", **env: str
) -> tuple[dict[str, list[Row]], list[str]]:
    """What a sync and an async call to each backend returned, and the warnings logged, with
    ``root`` (or each of a list, in order) on the path and the code ``before`` run first."""
    roots = root if isinstance(root, list) else [root]
    proc = python(before + CALL.replace("BACKENDS", repr(backends)), *roots, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr.splitlines()


def failed(rows: list[Row], kind: str, *says: str) -> None:
    """Both calls failed with ``kind`` and an error that says each of ``says``."""
    for r in rows:
        assert (r["success"], r["kind"]) == (False, kind), r
        for text in says:
            assert text in r["error"], (text, r["error"])


def loading_warnings(log: list[str]) -> list[str]:
    """The warnings about plugins, logged while loading them (not those of failed calls)."""
    return [line for line in log if line.startswith("WARNING chatplug plugin ")]


def echo_works(out: dict[str, list[Row]]) -> None:
    assert [r["content"] for r in out["echo"]] == ["echo: hello"] * 2, out["echo"]


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    fake_distribution(tmp_path, "chatplug-echo", "echo", ECHO_PLUGIN)
    return tmp_path


def add(root: Path, dist: str) -> None:
    entry, source = BROKEN[dist]
    fake_distribution(root, dist, entry, source)


# -- discovery ---------------------------------------------------------------------------


def test_entry_point_plugin_is_discovered_and_dispatched(plugins: Path) -> None:
    out, _ = call(plugins, "echo")
    ok = {"success": True, "content": "echo: hello", "error": None, "kind": None, "tokens": 5}
    assert out["echo"] == [ok, ok]


def test_llm_backend_env_selects_a_plugin(plugins: Path) -> None:
    code = "import chatplug; print(chatplug.generate_completion_sync('hi').content)"
    proc = python(code, plugins, LLM_BACKEND="echo")
    assert proc.stdout.strip() == "echo: hi", proc.stderr


def test_model_prefix_selects_a_plugin(plugins: Path) -> None:
    code = "import chatplug; r = chatplug.generate_completion_sync('hi', 'echo:tiny'); print(r.backend, r.model_used)"
    proc = python(code, plugins)
    assert proc.stdout.split() == ["echo", "tiny"], proc.stderr


def test_import_loads_no_entry_point_and_no_sdk(plugins: Path) -> None:
    proc = python(
        """
        import sys, chatplug, chatplug.testing
        # Plugins and SDKs load on first use; asyncio (~20 ms), decimal, difflib, and what tools and
        # structured output need (pydantic, docstring_parser, the tool loop) where used.
        loaded = [m for m in ("chatplug_echo", "chatplug.backends.ollama", "ollama", "openai", "anthropic",
                              "httpx", "importlib.metadata", "asyncio", "decimal", "difflib", "pydantic",
                              "docstring_parser", "xllamacpp", "chatplug._extras.tool_loop") if m in sys.modules]
        print(loaded)
        chatplug.generate_completion_sync("hi", backend="echo")
        print("chatplug_echo" in sys.modules, "ollama" in sys.modules, "openai" in sys.modules)
        """,
        plugins,
    )
    assert proc.stdout.splitlines() == ["[]", "True False False"], proc.stderr


def test_chatplug_plugins_restricts_third_party_plugins(plugins: Path) -> None:
    add(plugins, "chatplug-fragile")
    names = "import json, chatplug; print(json.dumps(chatplug.backend_names()))"
    only_echo = json.loads(python(names, plugins, CHATPLUG_PLUGINS="echo").stdout)
    assert "echo" in only_echo and "fragile" not in only_echo
    assert "ollama" in only_echo and "testing" in only_echo  # chatplug's own backends always load
    none = json.loads(python(names, plugins, CHATPLUG_PLUGINS="").stdout)  # as simonw/llm's LLM_LOAD_PLUGINS=''
    assert "echo" not in none and "fragile" not in none and "ollama" in none  # only chatplug's own load
    every = json.loads(python(names, plugins).stdout)
    assert "echo" in every and "fragile" in every


def test_backend_left_out_by_chatplug_plugins_says_so(plugins: Path) -> None:
    """Not "No backend named 'echo' is installed ... install the plugin": it is installed."""
    add(plugins, "chatplug-fragile")
    out, log = call(plugins, "echo", "echo2", CHATPLUG_PLUGINS="fragile")
    says = ["installed (from distribution 'chatplug-echo')", "not loaded", "CHATPLUG_PLUGINS=fragile does not list it"]
    failed(out["echo"], "config", *says)
    # A backend named unlike its plugin: the filter may be why it is missing.
    failed(out["echo2"], "config", "CHATPLUG_PLUGINS=fragile does not list them: echo (from chatplug-echo)")
    assert loading_warnings(log) == [], log


def test_chatplug_plugins_naming_no_plugin_warns_once(plugins: Path) -> None:
    """The distribution's name given for its plugin's loaded nothing, silently."""
    out, log = call(plugins, "echo", CHATPLUG_PLUGINS="chatplug-echo")
    failed(out["echo"], "config", "CHATPLUG_PLUGINS=chatplug-echo does not list it")
    warnings = [line for line in log if line.startswith("WARNING chatplug: CHATPLUG_PLUGINS")]
    assert len(warnings) == 1, log
    assert "names 'chatplug-echo'" in warnings[0] and "echo (from chatplug-echo)" in warnings[0]


def test_cli_lists_backends_with_their_distribution(plugins: Path) -> None:
    proc = python(LIST_BACKENDS, plugins)
    rows = dict(line.split() for line in proc.stdout.splitlines())
    assert rows["echo"] == "chatplug-echo"
    assert rows["ollama"] == "chatplug" and rows["testing"] == "chatplug"


# -- failure modes -----------------------------------------------------------------------


def test_plugin_that_fails_to_import(plugins: Path) -> None:
    add(plugins, "chatplug-broken")
    out, log = call(plugins, "echo", "broken")
    echo_works(out)
    assert [r["success"] for r in out["broken"]] == [False, False]  # what the call says: the test below
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log  # once per process, not once per call
    assert "failed to load" in warnings[0]
    assert "'broken'" in warnings[0] and "chatplug-broken" in warnings[0]
    assert "ImportError: this plugin needs libfoo" in warnings[0]


def test_calling_a_plugin_that_failed_to_import_says_why(plugins: Path) -> None:
    """"No backend named 'broken' is installed ... install the plugin" is wrong: it is installed."""
    add(plugins, "chatplug-broken")
    out, _ = call(plugins, "broken")
    failed(out["broken"], "plugin", "'broken'", "chatplug-broken", "failed to load", "this plugin needs libfoo")


def test_plugin_whose_register_backends_raises(plugins: Path) -> None:
    add(plugins, "chatplug-clumsy")
    out, log = call(plugins, "echo")
    echo_works(out)
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log
    assert "register_backends" in warnings[0] and "'clumsy'" in warnings[0]
    assert "no config section [clumsy]" in warnings[0]


def test_plugin_registering_a_builtin_name(plugins: Path, closed_port: int) -> None:
    add(plugins, "chatplug-squatter")
    out, log = call(plugins, "ollama", "echo", OLLAMA_HOST=f"127.0.0.1:{closed_port}")
    failed(out["ollama"], "connection", "ollama serve")  # still the built-in Ollama backend
    echo_works(out)
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log
    assert "already registered" in warnings[0]
    assert "'squatter'" in warnings[0] and "'ollama'" in warnings[0] and "(chatplug)" in warnings[0]


def test_two_plugins_registering_the_same_name(plugins: Path) -> None:
    fake_distribution(plugins, "chatplug-other-echo", "other-echo", TAKES_ECHO)
    out, log = call(plugins, "echo")
    # Which of the two loads first is up to the order of the path; the other is turned away.
    contents = {r["content"] for r in out["echo"]}
    assert contents in ({"echo: hello"}, {"the other echo"}), out
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log
    assert "already registered" in warnings[0]
    assert "'echo'" in warnings[0] and "'other-echo'" in warnings[0]


def test_entry_point_name_taken_by_another_distribution(plugins: Path) -> None:
    """A third-party `openai = chatplug_contoso` was dropped without a word (pluggy holds one
    plugin per name), and calling its backend said it was not installed."""
    fake_distribution(plugins, "chatplug-contoso", "openai", CONTOSO)
    out, log = call(plugins, "contoso", "echo")
    echo_works(out)
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log
    for text in ("plugin 'openai' (chatplug_contoso) from 'chatplug-contoso'", "is taken by distribution 'chatplug'"):
        assert text in warnings[0], warnings[0]
    failed(out["contoso"], "config", "No backend named 'contoso'", "Skipped at loading", "'chatplug-contoso'")
    rows = dict(line.split() for line in python(LIST_BACKENDS, plugins).stdout.splitlines())
    assert rows["openai"] == "chatplug" and "contoso" not in rows  # the built-in keeps its name


def test_two_distributions_with_one_entry_point_name(plugins: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two names for one plugin warn; the same distribution twice on the path does not."""
    later = tmp_path_factory.mktemp("later")
    fake_distribution(later, "chatplug-echo", "echo", ECHO_PLUGIN)  # a second copy of the same one
    fake_distribution(later, "chatplug-echo-fork", "echo", TAKES_ECHO)
    out, log = call([plugins, later], "echo")
    echo_works(out)  # the first on the path
    warnings = loading_warnings(log)
    assert len(warnings) == 1, log
    assert "plugin 'echo' (chatplug_echo_fork) from 'chatplug-echo-fork'" in warnings[0], warnings[0]
    assert "is taken by distribution 'chatplug-echo'" in warnings[0], warnings[0]


def test_distribution_with_a_malformed_entry_points_file(plugins: Path) -> None:
    """One unreadable entry_points.txt, even in a distribution that is no plugin, made
    importlib.metadata.entry_points() raise, and with it every call."""
    fake_distribution(plugins, "unrelated-tool", "tool", "")
    bad = "[console_scripts]\nthis line has no equals sign\n"
    (plugins / "unrelated_tool-1.0.dist-info" / "entry_points.txt").write_text(bad)
    out, log = call(plugins, "echo", "testing")
    echo_works(out)
    assert [r["content"] for r in out["testing"]] == ["hello"] * 2  # chatplug's own load too
    assert [line for line in log if "WARNING" in line] == [
        "WARNING chatplug distribution 'unrelated-tool' has an unreadable entry_points.txt "
        "(TypeError: Pair.__new__() missing 1 required positional argument: 'value'); it is skipped."
    ]  # once, not once per call


def test_distribution_finder_that_raises(plugins: Path) -> None:
    """A custom finder on sys.meta_path failing made every call raise: loading must never raise."""
    finder = """
import sys
class Finder:
    find_spec = staticmethod(lambda *args: None)
    def find_distributions(context=None):
        raise RuntimeError("the package index is gone")
sys.meta_path.append(Finder)
"""
    out, log = call(plugins, "echo", "testing", before=finder)
    echo_works(out)  # what was found before it failed is loaded
    assert [r["content"] for r in out["testing"]] == ["hello"] * 2
    assert [line for line in log if "WARNING" in line] == [
        "WARNING chatplug could not list every installed distribution: RuntimeError: the package index is gone"
    ]


@pytest.mark.parametrize(("name", "guess"), [("OPENAI", "'openai'"), ("opnai", "'openai'"), ("Ollama", "'ollama'")])
def test_unknown_backend_suggests_the_closest(name: str, guess: str) -> None:
    error = chatplug.generate_completion_sync("hi", backend=name).error or ""
    assert f"No backend named {name!r} is installed. Did you mean {guess}? Installed backends: " in error, error
    assert "ollama, openai" in error


def test_unknown_backend_with_no_close_name() -> None:
    error = chatplug.generate_completion_sync("hi", backend="zzz").error or ""
    assert "Did you mean" not in error and "Installed backends: " in error, error


@pytest.mark.parametrize(
    ("dist", "kind", "says"),
    [
        ("chatplug-fragile", "plugin", ["'fragile'", "chatplug-fragile", "failed to start: FileNotFoundError"]),
        ("chatplug-keyed", "config", ["set KEYED_API_KEY to your key"]),  # the plugin's own word and kind
        ("chatplug-confused", "plugin", ["'confused'", "chatplug-confused", "made a dict, not a chatplug.ChatBackend"]),
        ("chatplug-garbage", "plugin", ["'garbage'", "chatplug-garbage", "returned", "not a chatplug.ChatResult"]),
        ("chatplug-buggy", "plugin", ["'buggy'", "chatplug-buggy", "raised IndexError: tuple index out of range"]),
    ],
)
def test_plugin_failing_when_used(plugins: Path, dist: str, kind: str, says: list[str]) -> None:
    add(plugins, dist)
    name = BROKEN[dist][0]
    listing = python(LIST_BACKENDS, plugins)
    assert name in listing.stdout.split()  # listed: nothing of it runs before it is used
    out, _ = call(plugins, name, "echo")
    failed(out[name], kind, *says)
    echo_works(out)


def test_factory_that_raises_a_chatplug_error_is_named(plugins: Path) -> None:
    add(plugins, "chatplug-keyed")
    out, _ = call(plugins, "keyed")
    failed(out["keyed"], "config", "keyed: set KEYED_API_KEY to your key")


def test_backend_returning_a_chat_result_of_garbage(plugins: Path) -> None:
    """Today the sync call raises TypeError at the caller and the async one "succeeds" with
    content 3: chatplug must check the fields, not only the type."""
    fake_distribution(plugins, "chatplug-sloppy", "sloppy", BAD_RESULT_FIELDS)
    out, _ = call(plugins, "sloppy", "echo")
    failed(out["sloppy"], "plugin", "'sloppy'", "chatplug-sloppy", "ChatResult")
    echo_works(out)


def test_every_broken_plugin_at_once_leaves_the_others_working(plugins: Path, closed_port: int) -> None:
    for dist in BROKEN:
        add(plugins, dist)
    out, log = call(
        plugins, "echo", "testing", "ollama", "fragile", "garbage", "buggy", OLLAMA_HOST=f"127.0.0.1:{closed_port}"
    )
    echo_works(out)
    assert [r["content"] for r in out["testing"]] == ["hello"] * 2
    failed(out["ollama"], "connection")
    for name in ("fragile", "garbage", "buggy"):
        failed(out[name], "plugin", f"chatplug-{name}")
    # One warning per broken plugin at loading; then one per failed call, naming its backend.
    assert len(loading_warnings(log)) == 3, log
    calls = [line for line in log if "chat completion failed" in line]
    assert len(calls) == 8, log
