"""The backends that plugins registered, by name: each made by its factory on first use and
reused by every call until ``chatplug.close()``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from .._core.backend import ChatBackend
from .._core.exceptions import ChatplugError, ConfigError, PluginError, UnknownBackendError

logger = logging.getLogger("chatplug")


@dataclass
class BackendEntry:
    """A registered backend: where it came from, and its instance once made."""

    name: str
    factory: Callable[[], ChatBackend]
    plugin: str
    distribution: str
    instance: ChatBackend | None = field(default=None, repr=False)


@dataclass
class Unavailable:
    """Why backends may be missing, for the error a call naming one gets."""

    failed: dict[str, str] = field(default_factory=dict)  # plugin (or distribution) -> why it was skipped
    excluded: dict[str, str] = field(default_factory=dict)  # plugin -> distribution, left out by CHATPLUG_PLUGINS
    setting: str = ""  # CHATPLUG_PLUGINS as it was at loading


class BackendRegistry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.entries: dict[str, BackendEntry] = {}
        self.unavailable = Unavailable()

    def add(self, name: str, factory: Callable[[], ChatBackend], plugin: str, distribution: str) -> None:
        """Register ``name`` for ``plugin``; a name already taken keeps its first owner."""
        if not isinstance(name, str) or not name or ":" in name or not callable(factory):
            raise TypeError(
                f"register(name, factory) needs a non-empty name without ':' and a callable factory, "
                f"got {name!r}, {factory!r}"
            )
        taken = self.entries.get(name)
        if taken is not None:
            logger.warning(
                "chatplug plugin %r tried to register backend %r, already registered by plugin %r (%s); "
                "keeping the first.",
                plugin,
                name,
                taken.plugin,
                taken.distribution,
            )
            return
        self.entries[name] = BackendEntry(name, factory, plugin, distribution)

    def remove_plugin(self, plugin: str) -> None:
        for entry in [e for e in self.entries.values() if e.plugin == plugin]:
            if entry.instance is not None:
                entry.instance.close()
            del self.entries[entry.name]

    def made(self, name: str) -> ChatBackend | None:
        """The backend for ``name`` if it is made already (``get`` then returns at once), else ``None``."""
        entry = self.entries.get(name)
        return None if entry is None else entry.instance

    def get(self, name: str) -> ChatBackend:
        """The backend instance for ``name``, made by its factory on first use."""
        entry = self.entries.get(name)
        if entry is None:
            self._unavailable(name)
        if entry.instance is None:
            with self._lock:
                if entry.instance is None:
                    entry.instance = self._make(entry)
        return entry.instance

    def _make(self, entry: BackendEntry) -> ChatBackend:
        try:
            instance = entry.factory()
        except ChatplugError as exc:  # the backend's own word, e.g. "pip install ..."
            if exc.backend is None:
                exc.backend = entry.name  # named like every other failure: "acme: ..."
            raise
        except Exception as exc:
            raise PluginError(f"{self.describe(entry.name)} failed to start: {type(exc).__name__}: {exc}") from None
        if not isinstance(instance, ChatBackend):
            raise PluginError(
                f"{self.describe(entry.name)} made a {type(instance).__name__}, not a chatplug.ChatBackend."
            )
        return instance

    def _unavailable(self, name: str) -> NoReturn:
        """Raise what a call naming ``name``, which is no backend, should hear."""
        why = self.unavailable
        if name in why.failed:  # a plugin's entry point is usually named after its backend
            raise PluginError(f"backend {name!r} is not available: {why.failed[name]}.")
        if name in why.excluded:
            raise ConfigError(
                f"backend {name!r} is installed (from distribution {why.excluded[name]!r}) but not loaded: "
                f"CHATPLUG_PLUGINS={why.setting} does not list it. Add {name!r} to it, or unset it."
            )
        import difflib  # only on this error path: it costs `import chatplug` ~2 ms

        by_lower = {backend.lower(): backend for backend in self.entries}
        # The same name but for its case is the one meant; else the names close to it.
        same = [by_lower[name.lower()]] if name.lower() in by_lower else []
        close = same or [by_lower[c] for c in difflib.get_close_matches(name.lower(), by_lower, n=3)]
        guess = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        # Plugins that are installed but not loaded may be the one: say so, not only "not installed".
        skipped = f" Skipped at loading (one may provide it): {'; '.join(why.failed.values())}." if why.failed else ""
        if why.excluded:
            left_out = ", ".join(f"{plugin} (from {dist})" for plugin, dist in sorted(why.excluded.items()))
            skipped += f" Not loaded, as CHATPLUG_PLUGINS={why.setting} does not list them: {left_out}."
        raise UnknownBackendError(
            f"No backend named {name!r} is installed.{guess} Installed backends: "
            f"{', '.join(sorted(self.entries)) or 'none'}. Set LLM_BACKEND or pass backend= with one of "
            f"them, or install the plugin that provides it.{skipped}"
        )

    def describe(self, name: str) -> str:
        """``backend 'x' (plugin 'y' from distribution 'z')``, for error messages."""
        entry = self.entries.get(name)
        if entry is None:
            return f"backend {name!r}"
        return f"backend {name!r} (plugin {entry.plugin!r} from {entry.distribution!r})"

    def __iter__(self) -> Iterator[BackendEntry]:
        return iter(sorted(self.entries.values(), key=lambda e: e.name))

    def close(self) -> None:
        """Close every backend made; the next call to one runs its factory again."""
        with self._lock:
            for entry in self.entries.values():
                if entry.instance is not None:
                    instance, entry.instance = entry.instance, None
                    instance.close()
