"""Checking what a caller passed, before anything is sent: the prompt or messages, and the
keyword options. Every problem is an ``InvalidInputError`` that says what to pass instead; the
caller's objects are read, never changed (the request copies them)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .._core.checks import check_json, freeze, sendable, shown
from .._core.exceptions import InvalidInputError
from .._core.values import Message

ROLES = ("system", "user", "assistant", "tool")
TEXT_ROLES = ("system", "user", "assistant")

# Keyword options that would override what chatplug itself decides, with what to do instead.
RESERVED = {
    "model": "use model_name= or a 'backend:model' prefix",
    "messages": "pass them as the first argument",
    "stream": "use stream_completion_sync() / stream_completion_async() to stream",
    "options": "pass provider options as keyword arguments, e.g. num_ctx=4096",
}

#: chatplug's own keyword names: an option a letter or two from one is a typo, not an option.
KEYWORDS = ("model_name", "temperature", "max_tokens", "backend", "timeout", "max_retries", "fallbacks", "cache")


def prompt_messages(prompt: object) -> tuple[Message, ...]:
    """``prompt`` as the one user message it stands for (read-only, as the request holds it)."""
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}.")
    if not prompt.strip():
        raise InvalidInputError("prompt is empty: pass the text to send to the model.")
    return (MappingProxyType({"role": "user", "content": sendable(prompt, "prompt")}),)  # type: ignore[return-value]


def checked_messages(messages: object) -> tuple[Message, ...]:
    """``messages`` checked, in the form every backend receives: text or parts (images read and
    base64-encoded), tool calls, tool results; read-only copies, as the request holds them."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidInputError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    if not messages:
        raise InvalidInputError("messages is empty: pass at least one message.")
    checked: list[Message] = []
    names: dict[str, str] = {}  # tool call id -> tool name, for the tool results that answer them
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"messages[{i}] must be a dict with 'role' and 'content', got {type(message).__name__}."
            )
        content, role = message.get("content"), message.get("role")
        if len(message) == 2 and isinstance(content, str) and role in TEXT_ROLES:
            # Plain text, checked here as ``_message`` would, and ~6-9 us a message sooner: with a
            # 50-message conversation, 10.4-14.2% of a sync ollama call to the loopback fake server
            # (``tests/benchmarks/bench_kept.py``, medians of five runs on 2 shared cores).
            text = sendable(content, f"messages[{i}] content")
            checked.append(MappingProxyType({"role": role, "content": text}))  # type: ignore[arg-type]
            continue
        checked.append(freeze(_message(message, i, names)))
    return tuple(checked)


def _message(message: Mapping[str, Any], i: int, names: dict[str, str]) -> Message:
    where = f"messages[{i}]"
    if "role" not in message:
        raise InvalidInputError(f"{where} has no 'role'.")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidInputError(f"{where} has role {shown(role)}; use one of {', '.join(ROLES)}.")
    allowed = {"role", "content"} | ({"tool_calls", "thinking_blocks"} if role == "assistant" else set())
    allowed |= {"tool_call_id", "name"} if role == "tool" else set()
    extra = sorted(map(str, set(message) - allowed))
    if extra:
        raise InvalidInputError(
            f"{where} has unsupported key(s) {', '.join(map(repr, extra))} for a {role} message; it takes "
            f"{', '.join(map(repr, sorted(allowed)))}."
        )
    result: dict[str, Any] = {"role": role}
    calls = message.get("tool_calls")
    if "content" not in message and not (role == "assistant" and calls):
        raise InvalidInputError(f"{where} has no 'content'.")
    content = message.get("content")
    if content is None and role == "assistant" and calls:
        content = ""
    result["content"] = _content(content, where, role)
    if role == "assistant" and message.get("thinking_blocks") is not None:  # None or []: none (LiteLLM's None too)
        blocks = _thinking_blocks(message["thinking_blocks"], where)
        if blocks:
            result["thinking_blocks"] = blocks
    if role == "assistant" and calls:
        result["tool_calls"] = _calls(calls, where, names)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidInputError(f"{where} is a tool result without a 'tool_call_id': say which call it answers.")
        result["tool_call_id"] = sendable(call_id, f"{where} tool_call_id")
        name = message.get("name", names.get(call_id))
        if name is not None:
            result["name"] = sendable(str(name), f"{where} name")
    return result  # type: ignore[return-value]


def _content(content: object, where: str, role: str) -> object:
    if isinstance(content, str):
        return sendable(content, f"{where} content")
    if not isinstance(content, (list, tuple)):
        raise InvalidInputError(f"{where} content must be a string or a list of parts, got {type(content).__name__}.")
    parts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": sendable(part["text"], at)})
        elif kind == "image":
            if role not in ("user", "tool"):
                raise InvalidInputError(f"{at}: images go in user messages, not {role} ones.")
            parts.append(_image(part, at))
        else:
            raise InvalidInputError(
                f"{at} must be {{'type': 'text', 'text': str}} or {{'type': 'image', ...}}, got {shown(part)}."
            )
    return tuple(parts)


IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}  # fmt: skip


def _image(part: Mapping[str, Any], at: str) -> dict[str, str]:
    sources = [key for key in ("path", "url", "data") if key in part]
    if len(sources) != 1:
        raise InvalidInputError(f"{at} needs exactly one of 'path', 'url' or 'data', got {sources or 'none'}.")
    extra = sorted(set(part) - {"type", "media_type", sources[0]})
    if extra:
        raise InvalidInputError(f"{at} has unsupported key(s) {', '.join(map(repr, extra))}.")
    media_type = part.get("media_type")
    if media_type is not None and not (isinstance(media_type, str) and media_type.startswith("image/")):
        raise InvalidInputError(f"{at} media_type must be like 'image/png', got {shown(media_type)}.")
    if sources == ["url"]:
        url = part["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
            raise InvalidInputError(f"{at} url must be an http(s) or data: URL, got {shown(url)}.")
        return {"type": "image", "url": url}
    import base64

    if sources == ["path"]:
        from pathlib import Path

        path = Path(part["path"]) if isinstance(part["path"], (str, Path)) else None
        if path is None or not path.is_file():
            raise InvalidInputError(f"{at} path {shown(part['path'])} is not a file.")
        media_type = media_type or IMAGE_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise InvalidInputError(f"{at}: say the media_type of {path.name} (e.g. 'image/png').")
        return {"type": "image", "media_type": media_type, "data": base64.b64encode(path.read_bytes()).decode()}
    data = part["data"]
    if media_type is None:
        raise InvalidInputError(f"{at} has data but no media_type: add e.g. 'media_type': 'image/png'.")
    if isinstance(data, (bytes, bytearray)):
        return {"type": "image", "media_type": media_type, "data": base64.b64encode(data).decode()}
    if isinstance(data, str):
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            raise InvalidInputError(f"{at} data must be bytes or base64 text.") from None
        return {"type": "image", "media_type": media_type, "data": data}
    raise InvalidInputError(f"{at} data must be bytes or base64 text, got {type(data).__name__}.")


def _calls(calls: object, where: str, names: dict[str, str]) -> tuple[dict[str, Any], ...]:
    """An assistant message's tool calls, as ``LLMResponse.tool_calls`` gave them (``ToolCall``s
    or their dicts), or in OpenAI's shape."""
    if not isinstance(calls, (list, tuple)):
        raise InvalidInputError(f"{where} tool_calls must be a list, got {type(calls).__name__}.")
    checked = []
    for j, call in enumerate(calls):
        data = call.to_dict() if hasattr(call, "to_dict") else call
        if isinstance(data, Mapping) and isinstance(data.get("function"), Mapping):  # OpenAI's shape
            function = data["function"]
            data = {"id": data.get("id"), "name": function.get("name"), "arguments": function.get("arguments")}
        arguments = data.get("arguments", {}) if isinstance(data, Mapping) else None
        if isinstance(arguments, str):
            try:
                import json

                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if not (isinstance(data, Mapping) and isinstance(data.get("id"), str) and isinstance(data.get("name"), str)
                and isinstance(arguments, Mapping)):  # fmt: skip
            raise InvalidInputError(
                f"{where}.tool_calls[{j}] must have 'id', 'name' and 'arguments' (a dict), as "
                f"LLMResponse.tool_calls gives them; got {shown(call)}."
            )
        at = f"{where}.tool_calls[{j}]"
        sendable(data["id"], f"{at} id")
        sendable(data["name"], f"{at} name")
        check_json(arguments, f"{at} arguments")
        names[data["id"]] = data["name"]
        checked.append({"id": data["id"], "name": data["name"], "arguments": dict(arguments)})
    return tuple(checked)


#: The thinking blocks a message may carry back, and the keys each needs: Anthropic's two, the
#: reasoning of an OpenAI-compatible provider that wants it back (DeepSeek's thinking mode), and
#: Gemini's thought signatures (``tool_call_id`` names the call a signature is on).
THINKING_BLOCKS: Mapping[str, tuple[str, ...]] = {
    "thinking": ("thinking", "signature"),
    "redacted_thinking": ("data",),
    "reasoning_content": ("reasoning_content",),
    "thought_signature": ("signature",),
}


def _thinking_blocks(blocks: object, where: str) -> tuple[dict[str, Any], ...]:
    """An assistant message's thinking blocks, as ``LLMResponse.message`` gives them: the
    provider's own, each sent back as it is (other keys it may add included)."""
    if not isinstance(blocks, (list, tuple)):
        raise InvalidInputError(
            f"{where} thinking_blocks must be a list of blocks, as response.message gives them; "
            f"got {type(blocks).__name__}."
        )
    checked = []
    for j, block in enumerate(blocks):
        at = f"{where}.thinking_blocks[{j}]"
        if not (isinstance(block, Mapping) and _is_thinking_block(block)):
            raise InvalidInputError(
                f"{at} must be {{'type': 'thinking', 'thinking': str, 'signature': str}}, "
                f"{{'type': 'redacted_thinking', 'data': str}}, {{'type': 'reasoning_content', "
                f"'reasoning_content': str}} or {{'type': 'thought_signature', 'signature': str}}, "
                f"exactly as response.message gave it; got {shown(block)}."
            )
        check_json(block, at)
        checked.append(dict(block))
    return tuple(checked)


def _is_thinking_block(block: Mapping[Any, Any]) -> bool:
    kind = block.get("type")
    needed = THINKING_BLOCKS.get(kind) if isinstance(kind, str) else None
    return needed is not None and all(isinstance(block.get(key), str) for key in needed)


def check_options(options: Mapping[str, Any]) -> None:
    """Options must be JSON data, and not one of chatplug's own names."""
    for key, value in options.items():
        if key in RESERVED:
            raise InvalidInputError(f"option {key!r} is chatplug's own: {RESERVED[key]}.")
        sendable(key, f"option name {shown(key)}")
        check_json(value, f"option {shown(key)}")
        typo = _near_keyword(key)
        if typo:
            raise InvalidInputError(
                f"option {key!r} looks like a misspelt {typo!r}: pass {typo}=..., or check the option's name."
            )


# Cached: ``difflib`` on ollama's usual num_predict, top_p and repeat_penalty costs 8.1-10.4% of a
# sync call to the loopback fake server, ~120-240 us (``tests/benchmarks/bench_kept.py``, medians of
# five runs on 2 shared cores); a program passes the same few.
@functools.lru_cache(maxsize=256)
def _near_keyword(key: str) -> str | None:
    if key in KEYWORDS or len(key) < 5:
        return None
    import difflib  # only when options are given: it costs `import chatplug` ~2 ms

    close = difflib.get_close_matches(key, KEYWORDS, n=1, cutoff=0.8)
    return close[0] if close else None
