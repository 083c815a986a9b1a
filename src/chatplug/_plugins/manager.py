"""The plugin manager, set up once and loaded lazily, and the hooks chatplug calls on it.

Nothing here runs at ``import chatplug`` (this module imports pluggy: it is imported on the first
call, or the first ``chatplug backends``). Loading reads the entry points (``discovery``),
registers each plugin and collects the backends they register (``registry``); a broken plugin
costs one warning and is skipped.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import pluggy

from .. import hookspecs
from .._core.settings import env
from .discovery import ENTRY_POINT_GROUP, discover
from .registry import BackendRegistry

if TYPE_CHECKING:
    from .._core.values import ChatRequest, LLMResponse

logger = logging.getLogger("chatplug")


class Plugins:
    """The plugin manager and the backends its plugins registered. One per process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.loaded = False
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.backends = BackendRegistry()
        self.distributions: dict[str, str] = {}  # plugin name -> the distribution it comes from

    # -- loading -------------------------------------------------------------------------

    def load(self) -> None:
        """Load the entry points and collect their backends, once. Never raises: it runs inside
        every call, and a broken installation must cost one warning, not every call."""
        if self.loaded:
            return
        with self._lock:
            if self.loaded:
                return
            try:
                self._load()
            except Exception as exc:  # not retried on the next call: it would fail the same way
                logger.warning("chatplug could not load its plugins: %s: %s", type(exc).__name__, exc)
            self.loaded = True

    def _load(self) -> None:
        # Unset loads every plugin; set, only those listed, so an empty value loads none but
        # chatplug's own (as simonw/llm's LLM_LOAD_PLUGINS='' does).
        setting = env("CHATPLUG_PLUGINS")
        found = discover(setting)
        why = self.backends.unavailable
        why.setting, why.excluded = setting or "", found.excluded
        for dist, problem in found.broken.items():
            self._skip(dist, f"distribution {dist!r} has an unreadable entry_points.txt ({problem})")
        # pluggy's load_setuptools_entrypoints() stops at the first plugin that fails to import;
        # chatplug skips that one plugin with a warning and loads the rest.
        for dist, ep in found.entry_points:
            owner = self.distributions.get(ep.name)
            if owner is None:
                self.distributions[ep.name] = dist
                try:
                    self.pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not break the others
                    self._skip(ep.name, f"plugin {ep.name!r} from {dist!r} failed to load: {type(exc).__name__}: {exc}")
                    continue
                self._collect(ep.name)
            elif owner != dist:  # pluggy holds one plugin per name: say which one is left out
                self._skip(
                    f"{ep.name} ({dist})",
                    f"plugin {ep.name!r} ({ep.value}) from {dist!r} cannot load: its entry-point name {ep.name!r} "
                    f"is taken by distribution {owner!r} (names in the {ENTRY_POINT_GROUP!r} entry-point group "
                    "must be unique)",
                )
            # else: one distribution listing a name twice, loaded once already

    def _collect(self, plugin: str) -> None:
        """Call ``plugin``'s ``register_backends`` hook, if it has one."""
        dist = self.distributions.get(plugin, "?")
        for impl in self.pm.hook.register_backends.get_hookimpls():
            if impl.plugin_name != plugin:
                continue
            try:
                impl.function(lambda name, factory: self.backends.add(name, factory, plugin, dist))
            except Exception as exc:
                self._skip(
                    plugin, f"plugin {plugin!r} from {dist!r} failed in register_backends: {type(exc).__name__}: {exc}"
                )

    def _skip(self, what: str, why: str) -> None:
        """Log once why ``what`` is skipped, and keep it for the calls that name it."""
        self.backends.unavailable.failed[what] = why
        logger.warning("chatplug %s; it is skipped.", why)

    def register(self, plugin: object, name: str | None = None, distribution: str = "?") -> str:
        """Register a plugin object in-process (tests, applications); its backends and observers
        take effect at once. Returns the name it was registered under."""
        self.load()
        with self._lock:
            registered = self.pm.register(plugin, name=name)
            if registered is None:
                raise ValueError(f"a plugin named {name!r} is already registered")
            self.distributions[registered] = distribution
            self._collect(registered)
            return registered

    def unregister(self, name: str) -> None:
        """Remove a plugin registered with ``register``, its backends and its observers."""
        with self._lock:
            self.pm.unregister(name=name)
            self.distributions.pop(name, None)
            self.backends.remove_plugin(name)

    # -- observers ----------------------------------------------------------------------

    def on_request(self, request: ChatRequest) -> None:
        self._notify("on_request", {"request": request})

    def on_response(self, request: ChatRequest | None, response: LLMResponse) -> None:
        self._notify("on_response", {"request": request, "response": response})

    def _notify(self, hook: str, arguments: dict[str, Any]) -> None:
        """Call every observer of ``hook``, each with the arguments it names; one that raises is
        logged and skipped (pluggy's own hook call would stop at it)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(*(arguments[arg] for arg in impl.argnames))
            except Exception as exc:
                logger.warning(
                    "chatplug plugin %r raised in %s and was ignored: %s: %s",
                    impl.plugin_name,
                    hook,
                    type(exc).__name__,
                    exc,
                )

    def close(self) -> None:
        self.backends.close()


plugins = Plugins()
