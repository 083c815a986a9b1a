"""Finding plugins: the ``chatplug`` entry points of the installed distributions.

Read one distribution at a time: ``importlib.metadata.entry_points()`` raises for everything when
the entry_points.txt of any one installed distribution, even one unrelated to chatplug, is
malformed. chatplug's own come first, so a third-party plugin can never take a built-in name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import Distribution, EntryPoint

logger = logging.getLogger("chatplug")

ENTRY_POINT_GROUP = "chatplug"
OWN_DISTRIBUTION = "chatplug"


@dataclass
class Found:
    """What discovery found: the entry points to load, and what it left out and why."""

    entry_points: list[tuple[str, EntryPoint]] = field(default_factory=list)  # (distribution, entry point)
    excluded: dict[str, str] = field(default_factory=dict)  # plugin name -> distribution, not allowed
    broken: dict[str, str] = field(default_factory=dict)  # distribution -> why it could not be read


def discover(setting: str | None) -> Found:
    """The ``chatplug`` entry points to load: all when ``setting`` (``CHATPLUG_PLUGINS``) is
    ``None``, else only the third-party ones it names (chatplug's own always load)."""
    allowed = None if setting is None else {name.strip() for name in setting.split(",") if name.strip()}
    found = Found()
    seen: set[str] = set()
    candidates: list[tuple[str, EntryPoint]] = []
    try:
        from importlib.metadata import distributions

        for dist in distributions():
            problem: Exception | None = None
            try:
                eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
            except Exception as exc:
                eps, problem = [], exc
            if not eps and problem is None:
                continue
            name = _name(dist)  # only now: reading METADATA costs ~0.1 ms a distribution
            if key(name) in seen:
                continue  # the same distribution twice on sys.path: the first counts, as for importlib
            seen.add(key(name))
            if problem is not None:
                found.broken[name] = f"{type(problem).__name__}: {problem}"
            candidates += [(name, ep) for ep in eps]
    except Exception as exc:  # a custom finder that fails: keep the distributions found so far
        logger.warning("chatplug could not list every installed distribution: %s: %s", type(exc).__name__, exc)
    candidates.sort(key=lambda item: key(item[0]) != OWN_DISTRIBUTION)
    for owner, ep in candidates:
        if allowed is not None and key(owner) != OWN_DISTRIBUTION and ep.name not in allowed:
            found.excluded.setdefault(ep.name, owner)
        else:
            found.entry_points.append((owner, ep))
    unknown = sorted((allowed or set()) - {ep.name for _, ep in candidates})
    if unknown:  # usually a distribution's name (chatplug-echo) given for its plugin's (echo)
        third_party = sorted({f"{ep.name} (from {d})" for d, ep in candidates if key(d) != OWN_DISTRIBUTION})
        logger.warning(
            "chatplug: CHATPLUG_PLUGINS=%s names %s, but no installed plugin has that entry-point name. It takes "
            "plugin names, not distribution names; the installed ones: %s.",
            setting,
            ", ".join(map(repr, unknown)),
            ", ".join(third_party) or "none",
        )
    return found


def _name(dist: Distribution) -> str:
    """A distribution's name, or where it is when its METADATA cannot be read."""
    try:
        name = dist.name
    except Exception:
        name = None
    return name or str(getattr(dist, "_path", "a distribution without METADATA"))


def key(dist: str) -> str:
    """A distribution name as pip compares them: ``Chatplug_Echo`` is ``chatplug-echo``."""
    return re.sub(r"[-_.]+", "-", dist).lower()
