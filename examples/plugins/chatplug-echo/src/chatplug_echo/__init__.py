"""chatplug-echo: a chatplug backend named ``echo`` that answers with the last user message.

The smallest complete backend plugin, to copy. A backend gets a validated, fully resolved
``ChatRequest`` (messages, model, temperature, max_tokens, timeout, options) and returns a
``ChatResult``, or raises one of chatplug's exceptions. chatplug does the rest: input
validation, defaults, timing, logging, masking secrets in errors, and the ``LLMResponse`` the
caller gets.

The request is read-only all the way down: reading ``m["content"]`` works as on a dict, and
``chatplug.toolkit.thaw(request.messages)`` gives plain dicts and lists for JSON or an SDK.
A backend for a real service is built on ``chatplug.toolkit`` (client cache, error mapping,
settings and secrets): see "A backend for a real service" in docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable

from chatplug import ChatBackend, ChatRequest, ChatResult, InvalidInputError, hookimpl

__version__ = "0.1.0"


class EchoBackend(ChatBackend):
    """Replies with the last user message, cut to ``max_tokens`` words (one word, one token)."""

    # Used when neither the call nor LLM_MODEL_NAME names a model. Set it: without one, a
    # call that names no model fails with error_kind="invalid_input" and nothing is sent.
    default_model = "echo-1"

    # One instance serves every call, from any thread or event loop, until chatplug.close()
    # closes it (the next call makes a new one). A backend for a real service imports its SDK
    # in __init__ and keeps its clients on self, in a chatplug.toolkit.ClientCache: chatplug
    # imports this module whenever it loads plugins, but makes the backend only when "echo" is
    # first used.

    def complete(self, request: ChatRequest) -> ChatResult:
        return _echo(request)

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        # A real backend awaits its SDK's async client here; never block the event loop.
        return _echo(request)


def _echo(request: ChatRequest) -> ChatResult:
    users = [m["content"] for m in request.messages if m["role"] == "user"]
    if not users:
        # Fail with chatplug's exceptions: the caller gets success=False, error_kind="invalid_input".
        raise InvalidInputError("the echo backend needs at least one user message to echo.")
    words = users[-1].split()
    reply = words[: request.max_tokens]
    return ChatResult(
        content=" ".join(reply),
        model=request.model,
        prompt_tokens=sum(len(m["content"].split()) for m in request.messages),
        completion_tokens=len(reply),
        finish_reason="length" if len(reply) < len(words) else "stop",
    )


# The hook chatplug calls when it loads plugins: register each backend's name and factory.
# The factory (here the class) is called once, the first time the name is used.
@hookimpl
def register_backends(register: Callable[[str, Callable[[], ChatBackend]], None]) -> None:
    register("echo", EchoBackend)
