"""Every backend refuses, before anything is sent, a feature it does not declare in its
``capabilities``: the "refused" cells of the conformance matrix (tests/conformance.py)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import chatplug
from chatplug import ErrorKind, generate_completion_with_messages_sync

#: The matrix's features that a backend declares, and the capability each needs.
NEEDS = {"tools": "tools", "images": "images", "structured": "response_format"}


class Answer(BaseModel):
    text: str


def look_up(city: str) -> str:
    """Look a city up."""
    return city


def capabilities() -> dict[str, frozenset[str]]:
    from chatplug.backends.anthropic import AnthropicBackend
    from chatplug.backends.compatible import PROVIDERS
    from chatplug.backends.gemini import GeminiBackend
    from chatplug.backends.local import LocalBackend
    from chatplug.backends.ollama import OllamaBackend
    from chatplug.backends.openai import OpenAIBackend

    built_in = {
        "ollama": OllamaBackend,
        "openai": OpenAIBackend,
        "anthropic": AnthropicBackend,
        "gemini": GeminiBackend,
        "local": LocalBackend,
    }
    return {
        **{name: backend.capabilities for name, backend in built_in.items()},
        **{provider.name: provider.capabilities for provider in PROVIDERS},
    }


def test_every_installed_backend_but_testing_is_in_the_matrix() -> None:
    assert set(capabilities()) == set(chatplug.backend_names()) - {"testing"}


REFUSALS = [
    (name, feature) for name, has in capabilities().items() for feature, needed in NEEDS.items() if needed not in has
]


@pytest.mark.parametrize(("backend", "feature"), REFUSALS, ids=[f"{b}-{f}" for b, f in REFUSALS])
def test_refused_before_sending(backend: str, feature: str, closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Were anything sent, it would go to a closed port and fail as a connection error.
    for variable in (f"{backend.upper()}_BASE_URL", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.setenv(variable, f"http://127.0.0.1:{closed_port}/v1")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{closed_port}")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv(f"{backend.upper()}_API_KEY", "sk-test")
    content: object = "Hi"
    options: dict[str, object] = {}
    if feature == "tools":
        options["tools"] = [look_up]
    elif feature == "structured":
        options["response_format"] = Answer
    else:
        content = [
            {"type": "text", "text": "What is it?"},
            {"type": "image", "media_type": "image/png", "data": b"\x89PNG\r\n\x1a\n"},
        ]
    response = generate_completion_with_messages_sync(
        [{"role": "user", "content": content}], "some-model", backend=backend, **options
    )
    assert (response.success, response.error_kind) == (False, ErrorKind.INVALID_INPUT), response.error
    assert "nothing was sent" in (response.error or "")


def test_the_readme_lists_each_provider_with_its_key_and_default_model() -> None:
    from pathlib import Path

    from chatplug.backends.compatible import PROVIDERS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    for provider in PROVIDERS:
        row = rows[provider.name]
        assert f"`{provider.key_variable}`" in row
        assert (f"`{provider.default_model}`" if provider.default_model else "none: name one") in row
