"""Print pyproject.toml's floors as exact pins: ``name==floor`` for every ``name>=floor`` among
the dependencies and the extras (chatplug's own extras left out). CI installs the project with
these as constraints, so that the suite runs once on the lowest versions pyproject allows and
every floor is shown to install with the others and to pass."""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: hatchling's tomli
    import tomli as tomllib

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in project["optional-dependencies"].values():
    requirements += extra
pins: dict[str, str] = {}
for requirement in requirements:
    spec, _, marker = requirement.partition(";")
    found = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([^,\s]+)\s*", spec)
    if found is None or found[1].lower() == "chatplug":
        continue
    name, floor = found[1].lower(), found[3]
    if pins.setdefault(name, floor) != floor:
        sys.exit(f"{name} has two floors: {pins[name]} and {floor}")
for name, floor in sorted(pins.items()):
    print(f"{name}=={floor}")
