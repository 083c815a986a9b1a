"""The house's layout, as docs/architecture.md draws it: each family of modules on its floor, no
module importing one on a floor above it, and no import circle, counting every import a module
makes (at its top, inside functions, under ``TYPE_CHECKING``, and by name in a string)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "chatplug"

#: The floors, bottom up. A module may import its own floor's modules and those below.
FLOORS = [
    ("values and the backend contract", ["chatplug._core"]),
    ("the HTTP machinery; the plugin hooks", ["chatplug._http", "chatplug.hookspecs"]),
    ("the plugin manager", ["chatplug._plugins"]),
    ("the call pipeline", ["chatplug._pipeline"]),
    ("the extras on the public functions", ["chatplug._extras"]),
    (
        "the public modules",
        ["chatplug", "chatplug.toolkit", "chatplug.testing", "chatplug.chat_completion"],
    ),
    ("the backends", ["chatplug.backends"]),
    ("the command line", ["chatplug.cli", "chatplug.__main__"]),
]

#: What the top of ``src/chatplug/`` holds: the public modules and one folder per family.
TOP = {
    "__init__.py", "__main__.py", "chat_completion.py", "toolkit.py", "testing.py", "hookspecs.py", "py.typed",
    "cli", "_core", "_http", "_plugins", "_pipeline", "_extras", "backends",
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The chatplug modules that ``name`` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known.keys()
            found |= submodules
            if len(submodules) < len(node.names) and base in known:
                found.add(base)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known.keys()
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A module named in a string, imported by importlib or looked up in sys.modules:
            # "chatplug._pipeline.cache", or relative to this package as __init__'s _LAZY has it.
            text = node.value
            target = f"{package}{text}" if text.startswith(".") and " " not in text else text
            if target in known and target != "chatplug":  # "chatplug" alone is the logger's name
                found.add(target)
    found.discard(name)
    return found


def floor_of(name: str) -> int:
    best, floor = -1, -1
    for number, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), number
    assert floor >= 0, f"{name} is on no floor of FLOORS: add it to its family"
    return floor


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def test_the_top_level_holds_only_the_public_modules_and_the_families() -> None:
    here = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    assert here == TOP


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_one_on_a_floor_above(name: str) -> None:
    above = {other: FLOORS[floor_of(other)][0] for other in GRAPH[name] if floor_of(other) > floor_of(name)}
    assert not above, f"{name} ({FLOORS[floor_of(name)][0]}) imports from above: {above}"


def test_no_import_circles() -> None:
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for other in sorted(GRAPH[name]):
            if state.get(other) == 1:
                circles.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other)
        path.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    assert not circles, "\n".join(" -> ".join(circle) for circle in circles)


def test_the_checker_sees_a_circle_and_an_import_from_above(tmp_path: Path) -> None:
    """The checks above could pass by reading nothing: here they read a package made to fail."""
    package = tmp_path / "chatplug"
    (package / "_core").mkdir(parents=True)
    (package / "_pipeline").mkdir()
    for init in (package / "__init__.py", package / "_core" / "__init__.py", package / "_pipeline" / "__init__.py"):
        init.write_text("")
    (package / "_core" / "values.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._pipeline import call\n"
    )
    (package / "_pipeline" / "call.py").write_text("def f():\n    from .._core.values import X\n")
    (package / "__init__.py").write_text('_LAZY = {"X": "._pipeline.call"}\n')
    known = {
        "chatplug._core.values": package / "_core" / "values.py",
        "chatplug._pipeline.call": package / "_pipeline" / "call.py",
    }
    assert imports("chatplug._core.values", known["chatplug._core.values"], known) == {"chatplug._pipeline.call"}
    assert imports("chatplug._pipeline.call", known["chatplug._pipeline.call"], known) == {"chatplug._core.values"}
    known["chatplug"] = package / "__init__.py"
    assert imports("chatplug", known["chatplug"], known) == {"chatplug._pipeline.call"}
    assert floor_of("chatplug._pipeline.call") > floor_of("chatplug._core.values")
