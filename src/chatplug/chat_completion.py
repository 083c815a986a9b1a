"""The seed's module name, kept so existing agent code moves over by changing one import."""

from ._api import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)
from ._config import settings
from ._types import LLMResponse

__all__ = [
    "LLMResponse",
    "generate_completion_async",
    "generate_completion_sync",
    "generate_completion_with_messages_async",
    "generate_completion_with_messages_sync",
    "settings",
]
