"""Child processes for the tests, run as a user's shell would run them: with an environment
cleaned of everything that would change what chatplug, its SDKs or Python do in them; and
plugin distributions they find as if pip had installed them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

# chatplug's settings, the provider SDKs' and Python's own (a PYTHONPATH would leak this checkout).
PREFIXES = ("LLM_", "CHATPLUG_", "OLLAMA_", "OPENAI_", "ANTHROPIC_", "PYTHON")


def clean_env(*drop: str, **add: str) -> dict[str, str]:
    """``os.environ`` without the variables starting with ``PREFIXES`` or ``drop``, plus ``add``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES + drop)}
    env.update(add)
    return env


def run_pytest(folder: Path, *importable: Path) -> int:
    """Run pytest on ``folder`` from inside it, as a user runs their own tests, with ``folder``
    and ``importable`` on the path. Returns how many tests passed; fails if any did not."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=os.pathsep.join(str(p) for p in (folder, *importable))),
        cwd=folder,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = re.search(r"\b(\d+) passed\b", proc.stdout)
    assert passed is not None, proc.stdout
    return int(passed.group(1))


def python(code: str, *importable: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a child process with ``importable`` on its path."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=clean_env(PYTHONPATH=os.pathsep.join(str(p) for p in importable), **env),
        timeout=60,
    )


def fake_distribution(root: Path, name: str, entry: str, source: str | None = None) -> None:
    """An installed distribution as importlib.metadata sees one, once ``root`` is on the path:
    the module ``name`` (dashes as underscores; written from ``source`` unless importable
    already) and a dist-info whose ``chatplug`` entry point ``entry`` names that module."""
    module = name.replace("-", "_")
    if source is not None:
        (root / f"{module}.py").write_text(source)
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[chatplug]\n{entry} = {module}\n")
