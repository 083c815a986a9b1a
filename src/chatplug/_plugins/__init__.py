"""The plugin manager: entry-point discovery, the backend registry, the observer hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manager import Plugins


def plugins() -> Plugins:
    """The plugin manager of the process, imported on first use: it imports pluggy, which
    ``import chatplug`` does not need."""
    from .manager import plugins

    return plugins
