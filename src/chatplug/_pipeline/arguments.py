"""The typed hand-off from the public functions (``api``) to the pipeline, built by keyword. Alone
in its module, so that ``import chatplug`` imports no more of the pipeline than this; a named
tuple, not a frozen dataclass, which would cost ``import chatplug`` 1.1 ms more to make (0.6 ms
against 1.7: ~2% of its import time)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .._core.values import Message


class CallArguments(NamedTuple):
    """What a public function was given, handed to the pipeline as it was given (``call.Call``
    checks it)."""

    #: ``validate.prompt_messages`` or ``validate.checked_messages``: turns ``payload`` into the
    #: request's messages, once the backend is chosen (its errors come after the arguments' own).
    to_messages: Callable[[Any], tuple[Message, ...]]
    #: The prompt, or the messages.
    payload: object
    model_name: str | None
    temperature: float | None
    max_tokens: int | None
    backend: str | None
    #: The keyword options: chatplug's own (``timeout``, ``max_retries``, ``fallbacks``,
    #: ``fallback_on``, ``cache``, ``tools``, ``tool_choice``, ``response_format``) and the provider's.
    options: Mapping[str, Any]
