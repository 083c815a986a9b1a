"""The seed's module name, kept so existing agent code moves over by changing one import."""

from ._core.settings import settings
from ._core.values import LLMResponse
from ._pipeline.api import (
    generate_completion_async,
    generate_completion_sync,
    generate_completion_with_messages_async,
    generate_completion_with_messages_sync,
)

__all__ = [
    "LLMResponse",
    "generate_completion_async",
    "generate_completion_sync",
    "generate_completion_with_messages_async",
    "generate_completion_with_messages_sync",
    "settings",
]
