"""Settings: each one an override set in code, else an environment variable, else a default.

Nothing is cached: every call reads the environment again, so an operator's change to
``LLM_BACKEND`` or ``LLM_TIMEOUT`` takes effect on the next call.

    >>> from chatplug import settings
    >>> settings.temperature = 0.2      # overrides LLM_TEMPERATURE for this process
    >>> settings.temperature = None     # back to the environment
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from ._exceptions import ConfigError

T = TypeVar("T")


def _parse_temperature(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 2.0:
        raise ValueError("must be between 0 and 2")
    return value


def _whole_number(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be a whole number of at least {minimum}")
        return value

    return parse


def _parse_timeout(raw: str) -> float:
    value = float(raw)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive, finite number of seconds")
    return value


def _parse_name(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


class Setting(Generic[T]):
    """A descriptor: the value set in code if any, else the parsed env var, else the default."""

    def __init__(self, env: str, default: T, parse: Callable[[str], T], help: str) -> None:
        self.env, self.default, self.parse, self.help = env, default, parse, help
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...
    def __get__(self, obj: object | None, owner: type) -> Setting[T] | T:
        if obj is None:
            return self
        override: T | None = getattr(obj, self.attr, None)
        if override is not None:
            return override
        raw = os.environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            detail = str(exc) if "must" in str(exc) else f"expected {self.help}"
            raise ConfigError(f"{self.env}={raw!r} is not valid: {detail}.") from None

    def __set__(self, obj: object, value: T | None) -> None:
        if value is not None:
            try:
                value = self.parse(str(value))
            except ValueError as exc:
                raise ConfigError(f"settings.{self.attr[1:]}={value!r} is not valid: {exc}.") from None
        setattr(obj, self.attr, value)


# Where a value comes from, lowest first; a call's own argument ranks above them all.
DEFAULT, ENVIRONMENT, CODE, ARGUMENT = range(4)


class Settings:
    """chatplug's configuration. Read at call time; see the README's configuration table."""

    backend = Setting("LLM_BACKEND", "ollama", _parse_name, "a backend name")
    model_name = Setting("LLM_MODEL_NAME", "llama3.2", _parse_name, "a model name")
    temperature = Setting("LLM_TEMPERATURE", 0.7, _parse_temperature, "a number from 0 to 2")
    max_tokens = Setting("LLM_MAX_TOKENS", 500, _whole_number(1), "a whole number >= 1")
    timeout = Setting("LLM_TIMEOUT", 120.0, _parse_timeout, "a number of seconds")
    max_retries = Setting("LLM_MAX_RETRIES", 2, _whole_number(0), "a whole number >= 0")

    def source(self, name: str) -> int:
        """Where setting ``name`` comes from: ``CODE`` (set on this object), ``ENVIRONMENT``
        or ``DEFAULT``. Higher wins; the dispatcher compares these for ``backend:model``."""
        if getattr(self, "_" + name, None) is not None:
            return CODE
        setting: Setting[Any] = getattr(type(self), name)
        return ENVIRONMENT if os.environ.get(setting.env) else DEFAULT

    def __repr__(self) -> str:
        fields = ("backend", "model_name", "temperature", "max_tokens", "timeout", "max_retries")
        shown: list[str] = []
        for name in fields:
            try:
                value: Any = getattr(self, name)
            except ConfigError as exc:
                value = f"<{exc}>"
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"


settings = Settings()
