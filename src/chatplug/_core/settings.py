"""Settings: each one an override set in code, else an environment variable, else a default.

Every call reads the environment again, so an operator's change to ``LLM_BACKEND`` or
``LLM_TIMEOUT`` takes effect on the next call. A call reads all its settings at once, as one
``Snapshot``: one pass over the environment's variables.

    >>> from chatplug import settings
    >>> settings.temperature = 0.2      # overrides LLM_TEMPERATURE for this process
    >>> settings.temperature = None     # back to the environment

Each setting has one ``Rule``: what it takes, checked the same way whether the value comes
from a call's argument, from code or from the environment; only the error differs (a call's
bad argument is ``invalid_input``, a bad setting ``config``, and each names where it came from).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .checks import shown
from .exceptions import ConfigError, InvalidInputError
from .values import DEFAULT_MAX_RETRIES, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TIMEOUT

T = TypeVar("T")

#: Finite numbers lie strictly between -_INF and _INF (NaN compares false): no ``math`` import for it.
_INF = float("inf")

#: The largest max_tokens sent: more than any model generates, and what every API takes as an int32.
MAX_TOKENS_LIMIT = 2**31 - 1


def env(name: str) -> str | None:
    """Environment variable ``name`` stripped of surrounding whitespace; ``None`` when unset.

    The one way chatplug reads the environment. A value that is empty after stripping is
    returned as ``""``: most readers treat it as unset, and ``CHATPLUG_PLUGINS=`` means "none".
    """
    environ = os.environ
    raw = _raw if _raw.environ is environ else _raw_of(environ)
    if raw.data is None:
        return _decoded(environ.get(name))  # the public mapping (see _Raw)
    return _decoded(raw.data.get(raw.encodekey(name)))


class _Raw:
    """How chatplug reads ``environ`` (``os.environ``): through its own dict (``data``, CPython's
    ``os.environ._data``: encoded names to encoded values, which every change made through
    ``os.environ`` makes too), or, where ``data`` is ``None``, through the public mapping.

    A sync ollama call reads fifteen variables (``_texts()``'s thirteen, then its backend's two),
    most of them unset: through the mapping, an unset one costs two ``KeyError``s raised and caught.
    ``tests/benchmarks/bench_kept.py`` (1) measures it inside real sync calls to the loopback fake
    server, the two ways alternating: the mapping costs 2.5-4.3% more a call (~25-75 us; medians of
    five runs of 300 rounds on 2 shared cores: over issue 26's bar of 2%, but not by much); in a
    tight loop, 20 us against 1.4 us. The dict is private: it is used only where it is there
    and reads as the mapping does (``_raw_of``); else the mapping is, with one warning, and only
    that speed is lost (``tests/test_api.py`` takes it away).
    """

    def __init__(
        self, environ: object, data: dict[Any, Any] | None = None, encodekey: Any = None, decodevalue: Any = None
    ) -> None:
        self.environ, self.data, self.encodekey, self.decodevalue = environ, data, encodekey, decodevalue
        #: The settings' names as keys of ``data``, for ``_texts()``.
        self.setting_keys: tuple[Any, ...] = tuple(map(encodekey, _ENV_NAMES)) if data is not None else ()


def _raw_of(environ: object) -> _Raw:
    """How to read ``environ`` (see ``_Raw``), found once for each object ``os.environ`` is."""
    global _raw
    raw = _Raw(environ)
    if isinstance(environ, _Environ):  # else a mapping put in its place (a test's, say): no warning
        data = getattr(environ, "_data", None)
        encodekey, decodevalue = getattr(environ, "encodekey", None), getattr(environ, "decodevalue", None)
        why = "os.environ has no _data dict, encodekey and decodevalue"
        if isinstance(data, dict) and callable(encodekey) and callable(decodevalue):
            try:
                name = next(iter(environ), None)  # a variable set reads the same both ways
                if name is None or decodevalue(data[encodekey(name)]) == environ[name]:
                    raw = _Raw(environ, data, encodekey, decodevalue)
                else:
                    why = "os.environ._data does not hold what os.environ does"
            except Exception as exc:
                why = f"reading os.environ._data failed ({type(exc).__name__}: {exc})"
        if raw.data is None:
            from .internals import lost

            lost("reading environment variables through os.environ's own dict (a speed-up)", why)
    _raw = raw
    return raw


_Environ = type(os.environ)


def _real(value: object) -> float | None:
    import numbers  # here, not at the top: it costs ``import chatplug`` ~1 ms

    # numbers.Real covers int, float, Fraction and numpy's floats; Decimal is a Number but no Complex.
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real)
        or (isinstance(value, numbers.Number) and not isinstance(value, numbers.Complex))
    ):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]  # a Real or a Decimal: both convert
    except (OverflowError, ValueError):  # an int past float's range, a Decimal NaN that signals
        return None
    return number if -_INF < number < _INF else None


def _whole(value: object) -> int | None:
    import numbers

    return None if isinstance(value, bool) or not isinstance(value, numbers.Integral) else int(value)


class Rule(Generic[T]):
    """What one setting takes. ``check`` returns the normalised value of a Python value, or
    ``None`` when it is not valid; ``parse`` reads the environment's text into a Python value.
    (A plain class: a dataclass costs ``import chatplug`` a millisecond.)"""

    __slots__ = ("check", "expected", "parse")

    def __init__(self, expected: str, check: Callable[[object], T | None], parse: Callable[[str], object]) -> None:
        self.expected = expected  # completes "must be ...": "a number from 0 to 2"
        self.check, self.parse = check, parse

    def argument(self, name: str, value: object) -> T:
        """``value`` passed to a call as ``name``; ``InvalidInputError`` if not valid."""
        checked = self.check(value)
        if checked is None:
            raise InvalidInputError(f"{name} must be {self.expected}, got {shown(value)}.")
        return checked

    def setting(self, where: str, value: object) -> T:
        """``value`` from ``where`` (``LLM_TEMPERATURE``, ``settings.temperature``): ``ConfigError``."""
        checked = self.check(value)
        if checked is None:
            raise ConfigError(f"{where}={shown(value)} is not valid: expected {self.expected}.")
        return checked

    def environment(self, var: str, raw: str) -> T:
        """The value of environment variable ``var``, whose text is ``raw``: ``ConfigError``."""
        try:
            checked = self.check(self.parse(raw))
        except ValueError:
            checked = None
        if checked is None:
            raise ConfigError(f"{var}={shown(raw)} is not valid: expected {self.expected}.")
        return checked


def _in_range(low: float, high: float) -> Callable[[object], float | None]:
    def check(value: object) -> float | None:
        number = _real(value)
        return number if number is not None and low <= number <= high else None

    return check


def _whole_from(minimum: int) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        number = _whole(value)
        return number if number is not None and minimum <= number <= MAX_TOKENS_LIMIT else None

    return check


def _positive(value: object) -> float | None:
    number = _real(value)
    return number if number is not None and number > 0 else None


def _name(value: object) -> str | None:
    if not isinstance(value, str) or (not value.isascii() and not _encodable(value)):
        return None
    return value.strip() or None


def _encodable(text: str) -> bool:
    """Whether ``text`` can go on a wire: no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _transport_name(value: object) -> str | None:
    name = value.strip().lower() if isinstance(value, str) else None
    return name if name in ("aiohttp", "default") else None


def _names(value: object) -> tuple[str, ...] | None:
    """A comma-separated list (or a list) of non-empty names."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) and item.strip() for item in items):
        return None
    return tuple(item.strip() for item in items)


def _cache_place(value: object) -> str | None:
    """A cache's place: a ``redis://`` (``rediss://``, ``unix://``) URL or a file path."""
    if not isinstance(value, str) or not _encodable(value) or not value.strip():
        return None
    return value.strip()


def _redis_url(value: object) -> str | None:
    place = _cache_place(value)
    return place if place is not None and place.lower().startswith(("redis://", "rediss://", "unix://")) else None


#: The units of a rate limit, per minute: requests and tokens.
RATE_UNITS = ("rpm", "tpm")


def _rate_limits(value: object) -> tuple[tuple[str, float | None, float | None], ...] | None:
    """``LLM_RATE_LIMIT``: ``backend=LIMIT[/LIMIT],...`` with each LIMIT a positive number followed
    by ``rpm`` or ``tpm``; ``*`` names every other backend. Parsed to ``((backend, rpm, tpm), ...)``
    (``None``: no limit of that unit). Already parsed (from ``settings``), kept as is."""
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    limits: dict[str, tuple[float | None, float | None]] = {}
    for entry in value.split(","):
        backend, equals, spec = entry.partition("=")
        backend = backend.strip()
        if not equals or not backend or backend in limits or not spec.strip():
            return None
        rpm = tpm = None
        for part in spec.split("/"):
            part = part.strip().lower()
            unit, number = part[-3:], part[:-3].strip()
            rate = _positive(_number(number)) if unit in RATE_UNITS else None
            if rate is None or (rpm if unit == "rpm" else tpm) is not None:
                return None
            rpm, tpm = (rate, tpm) if unit == "rpm" else (rpm, rate)
        limits[backend] = (rpm, tpm)
    return tuple((backend, rpm, tpm) for backend, (rpm, tpm) in limits.items())


def _number(text: str) -> float | None:
    try:
        return float(text.replace("_", "")) if text else None
    except ValueError:
        return None


TEMPERATURE = Rule("a number from 0 to 2", _in_range(0.0, 2.0), float)
MAX_TOKENS = Rule(f"a whole number from 1 to {MAX_TOKENS_LIMIT}", _whole_from(1), int)
TIMEOUT = Rule("a positive, finite number of seconds", _positive, float)
MAX_RETRIES = Rule("a whole number of at least 0", _whole_from(0), int)
NAME = Rule("a non-empty name", _name, str)
NAMES = Rule("a comma-separated list of names", _names, str)
ASYNC_TRANSPORT = Rule("aiohttp or default", _transport_name, str)
CACHE = Rule("a file path (SQLite) or a redis:// URL", _cache_place, str)
CACHE_TTL = Rule("a positive, finite number of seconds", _positive, float)
RATE_LIMIT = Rule(
    "comma-separated backend=LIMIT[/LIMIT] entries, each LIMIT a positive number and rpm or tpm, * for every "
    "other backend: e.g. openai=500rpm/200000tpm,*=1000rpm",
    _rate_limits,
    str,
)
URL = Rule("a redis:// (rediss://, unix://) URL", _redis_url, str)


class Setting(Generic[T]):
    """A descriptor: the value set in code if any, else the environment's, else the default."""

    def __init__(self, env: str, default: T, rule: Rule[Any]) -> None:
        self.env, self.default, self.rule = env, default, rule
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: Settings, owner: type) -> T: ...
    def __get__(self, obj: Settings | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        return self.value(obj, env(self.env))

    def value(self, obj: Settings, raw: str | None) -> T:
        """The value when the environment variable holds ``raw`` (stripped; ``None``: unset)."""
        override: T | None = obj._overrides.get(self.name)
        if override is not None:
            return override
        if not raw:
            return self.default
        value: T = self.rule.environment(self.env, raw)
        return value

    def __set__(self, obj: Settings, value: object) -> None:
        if value is None:
            obj._overrides.pop(self.name, None)
        else:
            obj._overrides[self.name] = self.rule.setting(f"settings.{self.name}", value)


# Where a value comes from, lowest first; a call's own argument ranks above them all.
DEFAULT, ENVIRONMENT, CODE, ARGUMENT = range(4)


class Settings:
    """chatplug's configuration. Read at call time; see the README's configuration table."""

    backend: Setting[str] = Setting("LLM_BACKEND", "ollama", NAME)
    #: ``None``: the chosen backend's own ``default_model``.
    model_name: Setting[str | None] = Setting("LLM_MODEL_NAME", None, NAME)
    temperature: Setting[float] = Setting("LLM_TEMPERATURE", DEFAULT_TEMPERATURE, TEMPERATURE)
    max_tokens: Setting[int] = Setting("LLM_MAX_TOKENS", DEFAULT_MAX_TOKENS, MAX_TOKENS)
    timeout: Setting[float] = Setting("LLM_TIMEOUT", DEFAULT_TIMEOUT, TIMEOUT)
    max_retries: Setting[int] = Setting("LLM_MAX_RETRIES", DEFAULT_MAX_RETRIES, MAX_RETRIES)
    #: ``backend:model`` targets tried in order when the chosen one keeps failing.
    fallbacks: Setting[tuple[str, ...]] = Setting("LLM_FALLBACKS", (), NAMES)
    #: Error kinds besides the transient ones that move a call on to its next fallback.
    fallback_on: Setting[tuple[str, ...]] = Setting("LLM_FALLBACK_ON", (), NAMES)
    #: The response cache: a file path (SQLite) or a ``redis://`` URL; ``None``: off.
    cache: Setting[str | None] = Setting("LLM_CACHE", None, CACHE)
    #: Seconds a cached response is kept; ``None``: no expiry.
    cache_ttl: Setting[float | None] = Setting("LLM_CACHE_TTL", None, CACHE_TTL)
    #: Client-side rate limits per backend, ``((backend, rpm, tpm), ...)``; ``()``: none.
    rate_limit: Setting[tuple[tuple[str, float | None, float | None], ...]] = Setting("LLM_RATE_LIMIT", (), RATE_LIMIT)
    #: The Redis that shares the rate limits; ``None``: ``cache`` when that is a Redis URL, else none.
    rate_limit_redis: Setting[str | None] = Setting("LLM_RATE_LIMIT_REDIS", None, URL)

    #: The transport of async clients: ``aiohttp`` (the default), or ``default`` for the SDK's own.
    async_transport: Setting[str] = Setting("LLM_ASYNC_TRANSPORT", "aiohttp", ASYNC_TRANSPORT)

    NAMES = (
        "backend", "model_name", "temperature", "max_tokens", "timeout", "max_retries", "fallbacks", "fallback_on",
        "cache", "cache_ttl", "rate_limit", "rate_limit_redis", "async_transport",
    )  # fmt: skip

    def __init__(self) -> None:
        self._overrides: dict[str, Any] = {}

    def snapshot(self) -> Snapshot:
        """Every setting's value now, as one call sees them (a bad one raises ``ConfigError``
        only when read, as ``settings.<name>`` does): the environment read in one pass."""
        return Snapshot(self, _texts())

    def source(self, name: str) -> int:
        """Where setting ``name`` comes from: ``CODE`` (set on this object), ``ENVIRONMENT``
        or ``DEFAULT``. Higher wins; the pipeline compares these for ``backend:model``."""
        if name in self._overrides:
            return CODE
        setting: Setting[Any] = getattr(type(self), name)
        return ENVIRONMENT if env(setting.env) else DEFAULT

    def reset(self) -> None:
        """Forget every value set in code: the environment and the defaults apply again."""
        self._overrides.clear()

    def __repr__(self) -> str:
        shown: list[str] = []
        for name in self.NAMES:
            try:
                value: Any = getattr(self, name)
            except ConfigError as exc:
                value = f"<{exc}>"
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"


class Snapshot:
    """The settings' values at one moment (``settings.snapshot()``), read-only attributes. A
    setting whose value is not valid is left unset, and reading it raises a fresh ``ConfigError``:
    a bad ``LLM_CACHE_TTL`` fails only the calls that use the cache, as before."""

    __slots__ = ("_bad", "_settings", *Settings.NAMES)

    # The attribute names, for type checkers (each slot holds the setting's value).
    if TYPE_CHECKING:
        backend: str
        model_name: str | None
        temperature: float
        max_tokens: int
        timeout: float
        max_retries: int
        fallbacks: tuple[str, ...]
        fallback_on: tuple[str, ...]
        cache: str | None
        cache_ttl: float | None
        rate_limit: tuple[tuple[str, float | None, float | None], ...]
        rate_limit_redis: str | None
        async_transport: str

    def __init__(self, settings: Settings, texts: tuple[object, ...]) -> None:
        bad: dict[str, str | None] = {}
        put = object.__setattr__
        for name, text in zip(Settings.NAMES, texts, strict=True):
            raw = _decoded(text)
            try:
                put(self, name, _SETTINGS[name].value(settings, raw))
            except ConfigError:
                bad[name] = raw  # left unset: reading it raises (__getattr__)
        put(self, "_settings", settings)
        put(self, "_bad", bad)

    def __getattr__(self, name: str) -> Any:
        """Only reached for an unset slot: a setting whose value is not valid."""
        bad = object.__getattribute__(self, "_bad")
        if name not in bad:
            raise AttributeError(name)
        return _SETTINGS[name].value(object.__getattribute__(self, "_settings"), bad[name])  # raises

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a settings snapshot is read-only: set chatplug.settings.{name} instead")

    __delattr__ = __setattr__  # type: ignore[assignment]


def _texts() -> tuple[object, ...]:
    """The raw text of every setting's environment variable, in one pass (what a snapshot is
    made from)."""
    environ = os.environ
    raw = _raw if _raw.environ is environ else _raw_of(environ)
    if raw.data is None:
        return tuple(map(environ.get, _ENV_NAMES))
    return tuple(map(raw.data.get, raw.setting_keys))


def _decoded(text: object) -> str | None:
    """A variable's raw value (``os.environ``'s own encoded value, or the mapping's str) as
    chatplug reads it: a str, stripped; ``None`` when unset. ``env()`` and ``_texts()`` both come here."""
    if text is None:
        return None
    if not isinstance(text, bytes):
        return str(text).strip()
    decodevalue = _raw.decodevalue
    return str(decodevalue(text) if decodevalue is not None else os.fsdecode(text)).strip()


_SETTINGS: dict[str, Setting[Any]] = {name: getattr(Settings, name) for name in Settings.NAMES}
_ENV_NAMES = tuple(setting.env for setting in _SETTINGS.values())
_raw = _Raw(None)  # found at the first read (_raw_of)

settings = Settings()
