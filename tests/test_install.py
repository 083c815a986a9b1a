"""What an install promises: the version its metadata gives, a floor for every dependency, an
sdist that carries the tests, and a ``local`` backend that says so where it cannot run.

CI (``.ci/run``) also builds the wheel and the sdist with ``python -m build``, checks them with
``twine check --strict``, installs the wheel in a clean venv and runs the README's main job with
it, and runs the suite on every Python found and on the floors as exact pins (``.ci/matrix.py``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from chatplug.backends import local

from .childproc import clean_env

try:
    import tomllib
except ImportError:  # Python 3.10: hatchling's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_the_metadata_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatplug", "--version"], capture_output=True, text=True, env=clean_env(), check=True
    )
    assert done.stdout.strip() == f"chatplug {metadata.version('chatplug')}"


def test_every_dependency_has_a_floor_the_matrix_pins() -> None:
    """.ci/floors.py pins each ``name>=floor``: a dependency without one would go untested at
    its lowest version."""
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith("chatplug[")]
    unpinned = [r for r in requirements if not re.match(r"[\w.\-]+(\[[^\]]*\])?>=[\w.]+(;|$)", r.replace(" ", ""))]
    assert unpinned == []
    floors = subprocess.run([sys.executable, str(ROOT / ".ci" / "floors.py")], capture_output=True, text=True)
    pinned = {line.split("==")[0] for line in floors.stdout.split()}
    assert {"aiohttp", "httpx", "ollama", "openai", "anthropic", "pydantic", "xllamacpp"} <= pinned


def test_the_sdist_carries_the_tests_and_the_readme(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    (sdist,) = tmp_path.glob("chatplug-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    carried = {"README.md", "pyproject.toml", "src/chatplug/py.typed", "tests/conftest.py", "tests/test_install.py"}
    carried |= {".ci/floors.py"}  # which tests/test_install.py runs
    assert carried <= names
    assert not [name for name in names if name.startswith((".venv", ".hypothesis", ".git/", ".mypy_cache"))]


@pytest.mark.parametrize(("system", "machine"), [("linux", "riscv64"), ("linux", "s390x"), ("freebsd14", "amd64")])
def test_the_local_backend_names_a_platform_without_wheels(system: str, machine: str) -> None:
    why = local.unavailable(system, machine)
    assert why is not None and f"({system} {machine})" in why and "ollama" in why


@pytest.mark.parametrize(("system", "machine"), sorted(local.WHEEL_PLATFORMS))
def test_the_local_backend_runs_where_xllamacpp_has_wheels(system: str, machine: str) -> None:
    assert local.unavailable(system, machine) is None


def test_the_local_extra_marker_matches_the_platforms_the_backend_knows() -> None:
    """pyproject's environment marker takes xllamacpp on exactly ``local.WHEEL_PLATFORMS``."""
    from packaging.markers import Marker

    (requirement,) = PYPROJECT["project"]["optional-dependencies"]["local"]
    marker = Marker(requirement.partition(";")[2])
    systems = ("linux", "darwin", "win32", "freebsd14", "cygwin")
    machines = ("x86_64", "aarch64", "arm64", "AMD64", "ARM64", "riscv64", "s390x", "ppc64le", "i686")
    taken = {(s, m) for s in systems for m in machines if marker.evaluate({"sys_platform": s, "platform_machine": m})}
    assert taken == set(local.WHEEL_PLATFORMS)


def test_a_call_on_a_platform_without_wheels_is_config_naming_it() -> None:
    """As a user on such a platform meets it: xllamacpp absent (the extra left it out), a call to
    the local backend answers ``config`` naming the platform, before anything is loaded."""
    script = (
        "import platform, sys\n"
        "sys.modules['xllamacpp'] = None\n"  # not installed
        "platform.machine = lambda: 'riscv64'\n"
        "import chatplug\n"
        "r = chatplug.generate_completion_sync('hi', backend='local')\n"
        "print(r.success, r.error_kind)\n"
        "print(r.error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(), check=True)
    first, error = done.stdout.split("\n", 1)
    assert first == "False config"
    assert f"({sys.platform} riscv64)" in error and "not available on this platform" in error
