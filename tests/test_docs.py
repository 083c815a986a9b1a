"""The code in README.md and docs/ runs as written, and the README stays a short tour.

Each ```python block is run as a script in a process of its own, with no ``LLM_*`` variable and
``OLLAMA_HOST`` pointing at a fake Ollama server, so that calls without a backend go through the
real ollama backend to a recorded reply. An HTML comment on the line before a block says more:
``<!-- test: NAME -->`` runs it in the scenario NAME below (the server's replies, files beside it,
what it must print); ``<!-- skip: WHY -->`` leaves it out, saying why (at most a few may).
The blocks that name the ``local`` backend run the real model, with the other ``-m slow`` tests.
The plugin guide's blocks (docs/plugins.md) are run by tests/test_plugin_package.py and
tests/test_testing.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .fakeserver import FakeServer, Reply, fixture

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The plugin guide is left to the tests that build and install its packages (see above).
GUIDE = ROOT / "docs" / "plugins.md"
PAGES = [README, *sorted(page for page in (ROOT / "docs").rglob("*.md") if page != GUIDE)]

#: A ```python block, with the HTML comment on the line before it, if any.
BLOCK = re.compile(r"^(?:<!-- (test|skip): (.*?) -->\n)?```python\n(.*?)^```$", re.S | re.M)

OLLAMA_JSON = {"Content-Type": "application/json; charset=utf-8"}
ANSWER = "Rayleigh scattering: air molecules scatter short blue wavelengths of sunlight more than red ones."
STREAMED = "Rayleigh scattering: air molecules scatter blue light more."


def ollama(name: str) -> Reply:
    return Reply(200, fixture(f"ollama/{name}"), dict(OLLAMA_JSON))


GEMINI_MODEL = "gemini-3.8-flash"  # the gemini backend's default


def gemini(name: str) -> Reply:
    return Reply(200, fixture(f"gemini/{name}"), {"Content-Type": "application/json; charset=UTF-8"})


def ollama_says(content: str) -> Reply:
    body = json.loads(fixture("ollama/chat_nonstream_200.json"))
    body["message"]["content"] = content
    return Reply(200, json.dumps(body).encode(), dict(OLLAMA_JSON))


ANSWERS = ollama("chat_nonstream_200.json")
STREAM = Reply(200, b"", {"Content-Type": "application/x-ndjson"},
               pieces=fixture("ollama/chat_stream_200.ndjson").splitlines(keepends=True))  # fmt: skip
TOOL_CALL = ollama("chat_tool_nonstream_200.json")  # get_weather(city="Tokyo")
CAPITAL = ollama_says('{"city": "Paris", "country": "France"}')
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


@dataclass(frozen=True)
class Scenario:
    #: The fake Ollama server's replies to /api/chat, in order (the last one repeats).
    replies: tuple[Reply, ...] = (ANSWERS,)
    #: What the block's output must hold.
    prints: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    #: Runs the real local model (fetched once): with the other ``-m slow`` tests.
    slow: bool = False
    #: The same server's replies to Gemini's generateContent for the default model, in order;
    #: GEMINI_BASE_URL and GEMINI_API_KEY point the gemini backend at it.
    gemini: tuple[Reply, ...] = ()


SCENARIOS = {
    "default": Scenario(),
    "local": Scenario(slow=True),
    "use": Scenario(prints=(f"{ANSWER} 50 ", f"\n{ANSWER}\n")),
    "stream": Scenario(replies=(STREAM,), prints=(STREAMED,)),
    "tools": Scenario(
        replies=(TOOL_CALL, ANSWERS, TOOL_CALL, ANSWERS, CAPITAL, ANSWERS),
        prints=(f"{ANSWER} 2 True", "city='Paris' country='France'"),
        files={"photo.png": PNG},
    ),
    "tools-short": Scenario(
        replies=(TOOL_CALL, ANSWERS, CAPITAL), prints=(f"{ANSWER} 2 True", "city='Paris' country='France'")
    ),
    "cache": Scenario(prints=("False True 0\n", "False 1\n")),
    "batch": Scenario(prints=(f"{ANSWER}\n{ANSWER}\n", "0 True", "1 True")),
    "batch-short": Scenario(prints=("[True, True]",)),
    "errors": Scenario(prints=(ANSWER,)),
    "errors-short": Scenario(),
    "observer": Scenario(prints=("ollama ok 50",)),
    "testing": Scenario(),
    "testing-stream": Scenario(prints=("Hello\nserver\n{'city': 'Oslo'}",)),
    "echo": Scenario(env={"LLM_BACKEND": "testing"}, prints=("Echo me",)),
    "plugin": Scenario(prints=("HELLO",)),
    # A Gemini 3 tool step (a signed function call), then its answer: recorded replies.
    "gemini-tools": Scenario(
        gemini=(gemini("tool_200.json"), gemini("tool_result_200.json")),
        prints=("The current weather in Florence, Italy is 40°C.\n2 71\nthought_signature\n",),
    ),
}


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    directive: str | None  # "test", "skip" or None
    argument: str  # the scenario's name, or why it is skipped
    code: str

    @property
    def scenario(self) -> Scenario:
        return SCENARIOS[self.argument if self.directive == "test" else "default"]


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start(3))  # the fence's line, from 1
            found.append(Block(str(page.relative_to(ROOT)), line, match[1], match[2] or "", match[3]))
    return found


BLOCKS = blocks()


def params() -> list[object]:
    out = []
    for block in BLOCKS:
        marks = []
        if block.directive == "skip":
            marks.append(pytest.mark.skip(reason=f"{block.page}:{block.line}: {block.argument}"))
        elif block.directive == "test" and block.argument in SCENARIOS and SCENARIOS[block.argument].slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(block, id=f"{block.page}:{block.line}", marks=marks))
    return out


@pytest.mark.parametrize("block", params())
def test_the_example_runs(block: Block, tmp_path: Path) -> None:
    scenario = block.scenario
    server = FakeServer()
    server.route("POST", "/api/chat", *scenario.replies)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_") and k != "CHATPLUG_PLUGINS"}
    env |= {"OLLAMA_HOST": server.url, **scenario.env}
    if scenario.gemini:
        server.route("POST", f"/v1beta/models/{GEMINI_MODEL}:generateContent", *scenario.gemini)
        env |= {"GEMINI_BASE_URL": server.url, "GEMINI_API_KEY": "gemini-docs-key"}
    for name, content in scenario.files.items():
        (tmp_path / name).write_bytes(content)
    script = tmp_path / "example.py"
    script.write_text(block.code)
    try:
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)  # fmt: skip
    finally:
        server.close()
    assert proc.returncode == 0, f"{block.page}:{block.line}\n{proc.stdout}\n{proc.stderr}"
    for expected in scenario.prints:
        assert expected in proc.stdout, f"{block.page}:{block.line}: {expected!r} not in\n{proc.stdout}"
    if scenario.slow:
        assert proc.stdout.strip(), "the local model said nothing"


def test_every_block_is_found_and_named_well() -> None:
    pages = {block.page for block in BLOCKS}
    assert {"README.md", "docs/quickstart.md", "docs/tools.md", "docs/streaming.md"} <= pages
    for page in PAGES:  # a block the pattern missed (an indented fence, say) would go unrun
        assert page.read_text().count("```python") == sum(block.page == str(page.relative_to(ROOT)) for block in BLOCKS)
    for block in BLOCKS:
        if block.directive == "test":
            assert block.argument in SCENARIOS, f"{block.page}:{block.line}: no scenario {block.argument!r}"
        if block.directive == "skip":
            assert block.argument.strip(), f"{block.page}:{block.line}: a skip says why"


def test_few_blocks_are_skipped() -> None:
    skipped = [block for block in BLOCKS if block.directive == "skip"]
    assert len(skipped) <= len(BLOCKS) // 10, [f"{b.page}:{b.line}" for b in skipped]


def test_the_quickstart_runs_as_written() -> None:
    """The README's quickstart is the docs' quickstart, run with the real model (``-m slow``)."""
    readme = [b for b in BLOCKS if b.page == "README.md"]
    quickstart = [b for b in BLOCKS if b.page == "docs/quickstart.md"]
    assert readme[0].code == quickstart[0].code
    assert (readme[0].directive, readme[0].argument) == ("test", "local")


# -- the README: a short tour -----------------------------------------------------------------


def sections(text: str) -> dict[str, int]:
    """Each ``##`` section's title and its length in lines (its ``###`` subsections included)."""
    lengths: dict[str, int] = {}
    title, fence = "", False
    for line in text.splitlines():
        fence ^= line.startswith("```")
        if not fence and line.startswith("## "):
            title = line[3:]
        lengths[title] = lengths.get(title, 0) + 1
    return lengths


def test_the_readme_is_short() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 400
    too_long = {title: lines for title, lines in sections(text).items() if lines > 120}
    assert too_long == {}


def test_the_readme_opens_with_the_main_job_and_the_test_line() -> None:
    """CI runs them as the README gives them (.ci/run); they come first."""
    commands = re.findall(r"```sh\n(.*?)\n```", README.read_text(), re.S)
    assert commands[:2] == [
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[local]" && .venv/bin/chatplug --backend local '
        '"Why is the sky blue?"',
        'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest',
    ]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_the_readmes_links_lead_somewhere() -> None:
    """Relative links (to docs/ and examples/) name files that exist, and anchors headings there."""
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), target
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in {slug(title) for title in re.findall(r"^#+ (.*)$", text, re.M)}, target


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
