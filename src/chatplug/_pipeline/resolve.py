"""Choosing the backend and model of a call, and building its ``ChatRequest``.

Each value comes from the highest place that sets it: the call's argument > ``settings`` set in
code > the environment > the default (the backend's own ``default_model`` for the model). The
call reads the settings once (``settings.snapshot()``) and hands them in.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from .._core.backend import ChatBackend
from .._core.exceptions import InvalidInputError
from .._core.settings import ARGUMENT, MAX_TOKENS, NAME, TEMPERATURE, Snapshot, settings
from .._core.values import ChatRequest, Message


def check_arguments(
    model_name: object, temperature: object, max_tokens: object, backend: object
) -> tuple[str | None, float | None, int | None, str | None]:
    """The call's own arguments, checked by the same rules as the settings."""
    return (
        None if model_name is None else NAME.argument("model_name", model_name),
        None if temperature is None else TEMPERATURE.argument("temperature", temperature),
        None if max_tokens is None else MAX_TOKENS.argument("max_tokens", max_tokens),
        None if backend is None else NAME.argument("backend", backend),
    )


def choose(
    backend: str | None, model_name: str | None, backends: Container[str], config: Snapshot
) -> tuple[str, str | None]:
    """The backend and model for a call; the model is ``None`` when left to the backend's default.

    A ``backend:model`` prefix (one naming an installed backend, one of ``backends``:
    ``llama3.2:1b`` is an Ollama model) selects its backend when the model name comes from as
    high a place as the backend setting: call > code > environment. So
    ``LLM_MODEL_NAME=openai:gpt-4o`` selects openai over ``LLM_BACKEND``, but not over
    ``settings.backend`` set in code or ``backend=``. A model name prefixed for another backend
    than the chosen one is not sent to it.
    """
    model = config.model_name if model_name is None else model_name  # None: the backend's default
    chosen = backend or config.backend
    if model is None or ":" not in model:  # the common case, decided without more reads
        return chosen, model
    model_source = ARGUMENT if model_name is not None else settings.source("model_name")
    backend_source = ARGUMENT if backend is not None else settings.source("backend")
    prefix, sep, rest = model.partition(":")
    if not (sep and prefix in backends):
        return chosen, model
    if not rest.strip():
        raise InvalidInputError(f"model_name {model!r} names backend {prefix!r} but no model: use '{prefix}:MODEL'.")
    if model_source >= backend_source:
        if backend is not None and prefix != backend:
            raise InvalidInputError(f"backend={backend!r} contradicts model_name={model!r}: pass one or the other.")
        return prefix, rest.strip()
    return chosen, rest.strip() if prefix == chosen else None


#: Keyword arguments that are chatplug's own features, not provider options.
FEATURES = frozenset({"tools", "tool_choice", "response_format"})


def split_features(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the tools and structured-output arguments, made ready; the provider options)."""
    if FEATURES.isdisjoint(options):
        return {}, dict(options)
    from .._core.tools import check_tool_choice, make_response_format, make_tools

    rest = {key: value for key, value in options.items() if key not in FEATURES}
    features: dict[str, Any] = {}
    if options.get("tools") is not None:
        features["tools"] = make_tools(options["tools"])
    if options.get("tool_choice") is not None:
        features["tool_choice"] = check_tool_choice(options["tool_choice"], features.get("tools", ()))
    if options.get("response_format") is not None:
        features["response_format"] = make_response_format(options["response_format"])
    return features, rest


def check_capabilities(
    chosen: ChatBackend, name: str, messages: tuple[Message, ...], features: Mapping[str, Any]
) -> None:
    """A feature the backend does not declare is refused before anything is sent."""
    tools, images = "tools" in features, False
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            images = images or any(part["type"] == "image" for part in content)
        tools = tools or message["role"] == "tool" or bool(message.get("tool_calls"))
    needed = []
    if tools:
        needed.append(("tools", "call tools"))
    if images:
        needed.append(("images", "take images"))
    if "response_format" in features:
        needed.append(("response_format", "give structured output (response_format=)"))
    for capability, feature in needed:
        if capability not in chosen.capabilities:
            raise InvalidInputError(f"backend {name!r} cannot {feature}: nothing was sent. Use a backend that can.")


def build_request(
    chosen: ChatBackend,
    name: str,
    model: str | None,
    messages: tuple[Message, ...],
    temperature: float | None,
    max_tokens: int | None,
    options: Mapping[str, Any],
    features: Mapping[str, Any],
    timeout: float,
    deadline: float | None,
    config: Snapshot,
) -> ChatRequest:
    """The request for ``chosen``, with what the call left open filled from ``config`` (the
    model: the backend's ``default_model``). The SDK may not retry (``max_retries=0``): the
    pipeline does, for every backend alike."""
    model = model or chosen.default_model
    if not model:
        raise InvalidInputError(
            f"no model given, and backend {name!r} has no default model: pass model_name= or set LLM_MODEL_NAME."
        )
    check_capabilities(chosen, name, messages, features)
    return ChatRequest._of(
        {
            "messages": messages,
            "model": model,
            "temperature": config.temperature if temperature is None else temperature,
            "max_tokens": config.max_tokens if max_tokens is None else max_tokens,
            "timeout": timeout,
            "options": options,
            "backend": name,
            "max_retries": 0,
            "tools": features.get("tools", ()),
            "tool_choice": features.get("tool_choice"),
            "response_format": features.get("response_format"),
            "deadline": deadline,
        }
    )
