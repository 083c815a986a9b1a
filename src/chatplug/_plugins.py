"""The plugin manager, set up once and loaded lazily, and the registry of backends it fills.

Nothing here runs at ``import chatplug``: entry points are read on the first dispatch (or the
first ``chatplug backends``), and a backend's factory runs on the first call to that backend.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import pluggy

from . import hookspecs
from ._backend import ChatBackend
from ._exceptions import ChatplugError, ConfigError, PluginError, UnknownBackendError

if TYPE_CHECKING:
    from importlib.metadata import Distribution, EntryPoint

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
        self.distributions: dict[str, str] = {}  # plugin name -> the distribution it comes from
        # what was skipped -> why: a plugin name, "name (distribution)" for an entry point whose
        # name another distribution has, or the name of a distribution that could not be read
        self.failed: dict[str, str] = {}
        self.excluded: dict[str, str] = {}  # plugin name -> distribution, left out by CHATPLUG_PLUGINS
        self.plugins_setting = ""  # CHATPLUG_PLUGINS as it was at loading, for error messages

    # -- loading -------------------------------------------------------------------------

    def load(self) -> None:
        """Load the entry points and collect their backends, once. Never raises: it runs inside
        every call, and a broken installation must cost one warning, not every call."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            try:
                self._load_entry_points()
                for impl in self.pm.hook.register_backends.get_hookimpls():
                    self._collect(impl.plugin_name, impl.function)
            except Exception as exc:  # not retried on the next call: it would fail the same way
                logger.warning("chatplug could not load its plugins: %s", _error(exc))
            self._loaded = True

    def _load_entry_points(self) -> None:
        # pluggy's load_setuptools_entrypoints() stops at the first plugin that fails to
        # import; chatplug must skip that one plugin with a warning and load the rest, so it
        # walks the entry points itself (see _entry_points) and registers each plugin the same way.
        raw = os.environ.get("CHATPLUG_PLUGINS")
        self.plugins_setting = "" if raw is None else raw.strip()
        # Unset loads every plugin; set, only those listed, so an empty value loads none but
        # chatplug's own (as simonw/llm's LLM_LOAD_PLUGINS='' does).
        allowed = None if raw is None else {name.strip() for name in raw.split(",") if name.strip()}
        found = self._entry_points()
        for dist, ep in found:
            if allowed is not None and _key(dist) != OWN_DISTRIBUTION and ep.name not in allowed:
                self.excluded.setdefault(ep.name, dist)
                continue
            owner = self.distributions.get(ep.name)
            if owner is None:
                self.distributions[ep.name] = dist
                try:
                    self.pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not break the others
                    self._skip(ep.name, f"plugin {ep.name!r} from {dist!r} failed to load: {_error(exc)}")
            elif owner != dist:  # pluggy holds one plugin per name: say which one is left out
                self._skip(
                    f"{ep.name} ({dist})",
                    f"plugin {ep.name!r} ({ep.value}) from {dist!r} cannot load: its entry-point name "
                    f"{ep.name!r} is taken by distribution {owner!r} (names in the {ENTRY_POINT_GROUP!r} "
                    "entry-point group must be unique)",
                )
            # else: one distribution listing a name twice, loaded once already
        unknown = sorted((allowed or set()) - {ep.name for _, ep in found})
        if unknown:  # usually a distribution's name (chatplug-echo) given for its plugin's (echo)
            third_party = sorted({f"{ep.name} (from {d})" for d, ep in found if _key(d) != OWN_DISTRIBUTION})
            logger.warning(
                "chatplug: CHATPLUG_PLUGINS=%s names %s, but no installed plugin has that entry-point "
                "name. It takes plugin names, not distribution names; the installed ones: %s.",
                self.plugins_setting,
                ", ".join(map(repr, unknown)),
                ", ".join(third_party) or "none",
            )

    def _entry_points(self) -> list[tuple[str, EntryPoint]]:
        """(distribution, entry point) for the ``chatplug`` group, chatplug's own first so a
        third-party plugin can never take a built-in name. Read one distribution at a time:
        ``importlib.metadata.entry_points()`` raises for everything when the entry_points.txt
        of any one installed distribution, even one unrelated to chatplug, is malformed."""
        from importlib.metadata import distributions

        found: list[tuple[str, EntryPoint]] = []
        seen: set[str] = set()
        try:
            for dist in distributions():
                broken: Exception | None = None
                try:
                    eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
                except Exception as exc:
                    eps, broken = [], exc
                if not eps and broken is None:
                    continue
                name = _name(dist)  # only now: reading METADATA costs ~0.1 ms a distribution
                if _key(name) in seen:
                    continue  # the same distribution twice on sys.path: the first counts, as for importlib
                seen.add(_key(name))
                if broken is not None:
                    self._skip(name, f"distribution {name!r} has an unreadable entry_points.txt ({_error(broken)})")
                found += [(name, ep) for ep in eps]
        except Exception as exc:  # a custom finder that fails: keep the distributions found so far
            logger.warning("chatplug could not list every installed distribution: %s", _error(exc))
        found.sort(key=lambda item: _key(item[0]) != OWN_DISTRIBUTION)
        return found

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
            dist = self.distributions.get(plugin, "?")
            self._skip(plugin, f"plugin {plugin!r} from {dist!r} failed in register_backends: {_error(exc)}")

    def _skip(self, what: str, why: str) -> None:
        """Log once why ``what`` is skipped, and keep it for the calls that name it."""
        self.failed[what] = why
        logger.warning("chatplug %s; it is skipped.", why)

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

    @property
    def loaded(self) -> bool:
        return self._loaded

    def ready(self, name: str) -> bool:
        """Whether ``get(name)`` returns at once: plugins loaded and the backend already made."""
        entry = self.backends.get(name) if self._loaded else None
        return entry is not None and entry.instance is not None

    def get(self, name: str) -> ChatBackend:
        """The backend instance for ``name``, made by its factory on first use."""
        self.load()
        entry = self.backends.get(name)
        if entry is None:
            self._unavailable(name)
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

    def _unavailable(self, name: str) -> NoReturn:
        """Raise what a call naming ``name``, which is no backend, should hear."""
        # A plugin's entry point is usually named after its backend.
        if name in self.failed:
            raise PluginError(f"backend {name!r} is not available: {self.failed[name]}.")
        if name in self.excluded:
            raise ConfigError(
                f"backend {name!r} is installed (from distribution {self.excluded[name]!r}) but not loaded: "
                f"CHATPLUG_PLUGINS={self.plugins_setting} does not list it. Add {name!r} to it, or unset it."
            )
        by_lower = {backend.lower(): backend for backend in self.backends}
        import difflib  # only on this error path: it costs `import chatplug` ~2 ms

        close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), by_lower, n=3)]
        guess = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        # Plugins that are installed but not loaded may be the one: say so, not only "not installed".
        skipped = f" Skipped at loading (one may provide it): {'; '.join(self.failed.values())}." if self.failed else ""
        if self.excluded:
            left_out = ", ".join(f"{plugin} (from {dist})" for plugin, dist in sorted(self.excluded.items()))
            skipped += f" Not loaded, as CHATPLUG_PLUGINS={self.plugins_setting} does not list them: {left_out}."
        raise UnknownBackendError(
            f"No backend named {name!r} is installed.{guess} Installed backends: "
            f"{', '.join(sorted(self.backends)) or 'none'}. Set LLM_BACKEND or pass backend= with one of "
            f"them, or install the plugin that provides it.{skipped}"
        )

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


def _name(dist: Distribution) -> str:
    """A distribution's name, or where it is when its METADATA cannot be read."""
    try:
        name = dist.name
    except Exception:
        name = None
    return name or str(getattr(dist, "_path", "a distribution without METADATA"))


def _key(dist: str) -> str:
    """A distribution name as pip compares them: ``Chatplug_Echo`` is ``chatplug-echo``."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


registry = Registry()
