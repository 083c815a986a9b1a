"""The plugin manager, set up once and loaded lazily, and the registry of backends it fills.

Nothing here runs at ``import chatplug``: entry points are read on the first dispatch (or the
first ``chatplug backends``), and a backend's factory runs on the first call to that backend.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._backend import ChatBackend
from ._exceptions import ChatplugError, PluginError, UnknownBackendError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

logger = logging.getLogger("chatplug")

ENTRY_POINT_GROUP = "chatplug"
OWN_DISTRIBUTION = "chatplug"


@dataclass
class BackendEntry:
    """A registered backend: where it came from, and its instance once made."""

    name: str
    factory: Callable[[], ChatBackend]
    plugin: str
    distribution: str
    instance: ChatBackend | None = field(default=None, repr=False)


class Registry:
    """The plugin manager and the backends its plugins registered. One per process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, BackendEntry] = {}
        self.distributions: dict[str, str] = {}  # plugin name -> distribution name
        self.failed: dict[str, str] = {}  # plugin name -> why it was skipped

    # -- loading -------------------------------------------------------------------------

    def load(self) -> None:
        """Load the entry points and collect their backends, once."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._load_entry_points()
            for impl in self.pm.hook.register_backends.get_hookimpls():
                self._collect(impl.plugin_name, impl.function)
            self._loaded = True

    def _load_entry_points(self) -> None:
        # pluggy's load_setuptools_entrypoints() stops at the first plugin that fails to
        # import; chatplug must skip that one plugin with a warning and load the rest, so it
        # walks the same entry points itself and registers each plugin the same way.
        from importlib.metadata import entry_points

        allowed = _allowed_plugins()
        # chatplug's own plugins first, so a third-party plugin can never take a built-in name.
        eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: _dist_name(ep) != OWN_DISTRIBUTION)
        for ep in eps:
            dist = _dist_name(ep)
            own = dist == OWN_DISTRIBUTION
            if self.pm.has_plugin(ep.name) or (allowed is not None and not own and ep.name not in allowed):
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must not break the others
                self._skip(ep.name, dist, "failed to load", exc)
                continue
            self.distributions[ep.name] = dist

    def _collect(self, plugin: str, hook: Callable[[Callable[..., None]], Any]) -> None:
        def register(name: str, factory: Callable[[], ChatBackend]) -> None:
            if not isinstance(name, str) or not name or ":" in name or not callable(factory):
                raise TypeError(
                    f"register(name, factory) needs a non-empty name without ':' "
                    f"and a callable factory, got {name!r}, {factory!r}"
                )
            taken = self.backends.get(name)
            if taken is not None:
                logger.warning(
                    "chatplug plugin %r tried to register backend %r, already registered by "
                    "plugin %r (%s); keeping the first.",
                    plugin,
                    name,
                    taken.plugin,
                    taken.distribution,
                )
                return
            dist = self.distributions.get(plugin, "?")
            self.backends[name] = BackendEntry(name, factory, plugin, dist)

        try:
            hook(register)
        except Exception as exc:
            self._skip(plugin, self.distributions.get(plugin, "?"), "failed in register_backends", exc)

    def _skip(self, plugin: str, dist: str, failure: str, exc: Exception) -> None:
        """Log once why ``plugin`` is skipped, and keep it for the calls that name it."""
        self.failed[plugin] = f"plugin {plugin!r} from {dist!r} {failure}: {type(exc).__name__}: {exc}"
        logger.warning("chatplug %s; it is skipped.", self.failed[plugin])

    def register_plugin(self, plugin: object, name: str, distribution: str = "?") -> None:
        """Register a plugin object by hand (tests, applications); its backends join at once."""
        with self._lock:
            self.load()
            self.pm.register(plugin, name=name)
            self.distributions[name] = distribution
            for impl in self.pm.hook.register_backends.get_hookimpls():
                if impl.plugin_name == name:
                    self._collect(name, impl.function)

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered by hand, and its backends."""
        with self._lock:
            self.pm.unregister(name=name)
            for backend in [b for b in self.backends.values() if b.plugin == name]:
                if backend.instance is not None:
                    backend.instance.close()
                del self.backends[backend.name]

    # -- lookup --------------------------------------------------------------------------

    def names(self) -> list[str]:
        self.load()
        return sorted(self.backends)

    def is_backend(self, name: str) -> bool:
        self.load()
        return name in self.backends

    def get(self, name: str) -> ChatBackend:
        """The backend instance for ``name``, made by its factory on first use."""
        self.load()
        entry = self.backends.get(name)
        if entry is None:
            if name in self.failed:  # a plugin's entry point is usually named after its backend
                raise PluginError(f"backend {name!r} is not available: {self.failed[name]}.")
            installed = ", ".join(sorted(self.backends)) or "none"
            raise UnknownBackendError(
                f"No backend named {name!r} is installed. Installed backends: {installed}. "
                "Set LLM_BACKEND or pass backend= with one of them, or install the plugin "
                "that provides it."
            )
        if entry.instance is None:
            with self._lock:
                if entry.instance is None:
                    try:
                        instance = entry.factory()
                    except ChatplugError as exc:  # the backend's own word, e.g. "pip install ..."
                        if exc.backend is None:
                            exc.backend = name  # named like every other failure: "acme: ..."
                        raise
                    except Exception as exc:
                        raise PluginError(
                            f"{self.describe(name)} failed to start: {type(exc).__name__}: {exc}"
                        ) from exc
                    if not isinstance(instance, ChatBackend):
                        raise PluginError(
                            f"{self.describe(name)} made a {type(instance).__name__}, not a chatplug.ChatBackend."
                        )
                    entry.instance = instance
        return entry.instance

    def describe(self, name: str) -> str:
        """``backend 'x' (plugin 'y' from distribution 'z')``, for error messages."""
        entry = self.backends.get(name)
        if entry is None:
            return f"backend {name!r}"
        return f"backend {name!r} (plugin {entry.plugin!r} from {entry.distribution!r})"

    def entries(self) -> Iterator[BackendEntry]:
        self.load()
        yield from sorted(self.backends.values(), key=lambda e: e.name)

    # -- observability -------------------------------------------------------------------

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of an observability hook; one that raises is logged."""
        self.load()  # a first call that fails before dispatch (bad input) is observed too
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                logger.warning(
                    "chatplug plugin %r raised in %s and was ignored: %s: %s",
                    impl.plugin_name,
                    hook_name,
                    type(exc).__name__,
                    exc,
                )

    def close(self) -> None:
        with self._lock:
            for entry in self.backends.values():
                if entry.instance is not None:
                    entry.instance.close()
                    entry.instance = None


def _dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _allowed_plugins() -> set[str] | None:
    """``CHATPLUG_PLUGINS``: comma list of third-party plugins to load; unset loads all."""
    raw = os.environ.get("CHATPLUG_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


registry = Registry()
