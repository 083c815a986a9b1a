"""Tools and structured output: what the caller passes (Python functions, pydantic models, JSON
schema dicts) made into the ``Tool`` and ``ResponseFormat`` every backend receives, and what
comes back (tool-call arguments, structured replies) checked.

Schemas come from pydantic (``TypeAdapter(function).json_schema()`` reads a signature's type
hints; a model's ``model_json_schema()``), descriptions from the docstring (``docstring_parser``);
both are imported only when a call uses tools or structured output.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._config import _shown
from ._exceptions import InvalidInputError, InvalidOutputError
from ._types import freeze, thaw


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for: ``arguments`` parsed from the provider's JSON.
    ``raw_arguments`` is the text as it came (kept when it does not parse)."""

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": thaw(self.arguments)}


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: pieces with the same ``index`` make one call; ``id`` and
    ``name`` come once, ``arguments`` is a fragment of the JSON text, added up."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class Tool:
    """A tool the model may call, as backends receive it: its name, description and the JSON
    schema of its arguments. The caller's functions, pydantic models and dicts become these."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def schema(self) -> dict[str, Any]:
        """The parameters schema as plain data."""
        return thaw(self.parameters)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ResponseFormat:
    """The structured output asked for: a JSON schema, and its name. ``model`` is the pydantic
    class the caller passed (``None`` for a dict); the dispatcher validates with it."""

    name: str
    schema: Mapping[str, Any]
    model: Any = field(default=None, compare=False, repr=False)

    def json_schema(self) -> dict[str, Any]:
        return thaw(self.schema)  # type: ignore[no-any-return]


CHOICES = ("auto", "required", "none")


def make_tools(tools: object) -> tuple[Tool, ...]:
    """The caller's ``tools=`` list as ``Tool``s; ``InvalidInputError`` for what is none."""
    if not isinstance(tools, (list, tuple)):
        raise InvalidInputError(f"tools must be a list of functions, pydantic models or dicts, got {_shown(tools)}.")
    made = tuple(_tool(tool, i) for i, tool in enumerate(tools))
    names = [tool.name for tool in made]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InvalidInputError(f"tools has two tools named {', '.join(map(repr, twice))}: tool names must be unique.")
    return made


def _tool(tool: object, i: int) -> Tool:
    if isinstance(tool, Mapping):
        spec = tool.get("function", tool) if tool.get("type") == "function" else tool  # OpenAI's wrapper too
        name, parameters = spec.get("name"), spec.get("parameters", spec.get("input_schema", {"type": "object"}))
        if not isinstance(name, str) or not _valid_name(name) or not isinstance(parameters, Mapping):
            raise InvalidInputError(
                f"tools[{i}] must have a 'name' (letters, digits, _ or -) and a JSON-schema 'parameters' dict, "
                f"got {_shown(tool)}."
            )
        return Tool(name, str(spec.get("description") or ""), freeze(parameters))
    if _is_model(tool):
        doc = inspect.getdoc(tool) or ""
        return Tool(tool.__name__, doc, freeze(_without_titles(tool.model_json_schema())))  # type: ignore[attr-defined]
    if inspect.isfunction(tool) or inspect.ismethod(tool) or inspect.isbuiltin(tool):
        return function_tool(tool)
    raise InvalidInputError(
        f"tools[{i}] must be a function, a pydantic model class or a JSON-schema dict, got {_shown(tool)}."
    )


def function_tool(function: Callable[..., Any]) -> Tool:
    """A function as a tool: its name, its docstring's description, its parameters' schema (with
    each parameter's description from the docstring's Args/Parameters section)."""
    import docstring_parser
    from pydantic import TypeAdapter

    try:
        schema = TypeAdapter(function).json_schema()  # type: ignore[arg-type]  # a callable: its call schema
    except Exception as exc:  # a parameter type pydantic cannot describe
        raise InvalidInputError(
            f"tool {function.__name__!r}: its parameters cannot be described as JSON ({type(exc).__name__}: {exc})."
        ) from None
    doc = docstring_parser.parse(inspect.getdoc(function) or "")
    properties = schema.get("properties", {})
    for param in doc.params:
        if param.arg_name in properties and param.description:
            properties[param.arg_name]["description"] = param.description
    description = "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)
    return Tool(function.__name__, description, freeze(_without_titles(schema)))


def _without_titles(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic titles every property ("City" for ``city``): noise for the model, dropped."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return schema


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(ch.isalnum() or ch in "_-" for ch in name)


def _is_model(value: object) -> bool:
    return isinstance(value, type) and hasattr(value, "model_json_schema") and hasattr(value, "model_validate")


def check_tool_choice(choice: object, tools: Sequence[Tool]) -> str:
    names = [tool.name for tool in tools]
    if not tools:
        raise InvalidInputError("tool_choice needs tools=: pass the tools the model may call.")
    if choice in CHOICES or choice in names:
        return str(choice)
    raise InvalidInputError(
        f"tool_choice must be one of {', '.join(map(repr, CHOICES))} or a tool's name ({', '.join(map(repr, names))}), "
        f"got {_shown(choice)}."
    )


def make_response_format(value: object) -> ResponseFormat:
    """``response_format=``: a pydantic model class or a JSON-schema dict."""
    if _is_model(value):
        schema = value.model_json_schema()  # type: ignore[attr-defined]
        return ResponseFormat(value.__name__, freeze(schema), model=value)  # type: ignore[attr-defined]
    if isinstance(value, Mapping):
        if value.get("type") == "json_schema" and isinstance(value.get("json_schema"), Mapping):  # OpenAI's wrapper
            inner = value["json_schema"]
            return ResponseFormat(str(inner.get("name") or "response"), freeze(inner.get("schema", {})))
        return ResponseFormat(str(value.get("title") or "response"), freeze(value))
    raise InvalidInputError(
        f"response_format must be a pydantic model class or a JSON-schema dict, got {_shown(value)}."
    )


def parsed_output(content: str, response_format: ResponseFormat) -> Any:
    """The reply parsed and validated against the schema asked for: the pydantic instance, or
    the dict. ``InvalidOutputError`` when it does not fit (the raw text stays in ``content``)."""
    try:
        data = json.loads(_unfenced(content))
    except ValueError as exc:
        raise InvalidOutputError(
            f"the reply is not JSON ({exc}); the schema {response_format.name!r} asked for it."
        ) from None
    if response_format.model is not None:
        from pydantic import ValidationError

        try:
            return response_format.model.model_validate(data)
        except ValidationError as exc:
            raise InvalidOutputError(f"the reply does not fit {response_format.name}: {_errors(exc)}.") from None
    problem = schema_problem(data, response_format.json_schema())
    if problem:
        raise InvalidOutputError(f"the reply does not fit the schema {response_format.name!r}: {problem}.")
    return data


def _unfenced(text: str) -> str:
    """A reply some models wrap in a Markdown code fence, without it."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        stripped = stripped[stripped.find("\n") + 1 :] if "\n" in stripped else stripped
    return stripped


def _errors(exc: Any) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:5])


def schema_problem(data: Any, schema: Mapping[str, Any]) -> str | None:
    """What in ``data`` does not fit a JSON schema dict, or ``None``. Checks the structure a reply
    can get wrong (types, required keys, nested properties, array items, enums); for the whole
    JSON Schema vocabulary, pass a pydantic model."""
    expected = schema.get("type")
    checks: dict[str, Any] = {
        "object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool,
        "null": type(None),
    }  # fmt: skip
    wrong_type = (
        isinstance(expected, str)
        and expected in checks
        and (not isinstance(data, checks[expected]) or (expected in ("integer", "number") and isinstance(data, bool)))
    )
    if wrong_type:
        return f"expected {expected}, got {type(data).__name__}"
    if isinstance(data, dict):
        missing = [key for key in schema.get("required", ()) if key not in data]
        if missing:
            return f"missing {', '.join(map(repr, missing))}"
        for key, sub in schema.get("properties", {}).items():
            if key in data and isinstance(sub, Mapping):
                problem = schema_problem(data[key], sub)
                if problem:
                    return f"{key}: {problem}"
    if isinstance(data, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(data):
            problem = schema_problem(item, schema["items"])
            if problem:
                return f"[{i}]: {problem}"
    if "enum" in schema and data not in schema["enum"]:
        return f"{data!r} is not one of {list(schema['enum'])!r}"
    return None


def tool_calls(parts: Sequence[ToolCall | ToolCallDelta]) -> tuple[list[ToolCall], str | None]:
    """Whole tool calls from a backend's calls or streamed pieces, their arguments parsed; and
    what could not be parsed (the call is kept with empty arguments and its raw text)."""
    assembled: dict[int, dict[str, Any]] = {}
    calls: list[ToolCall] = []
    for part in parts:
        if isinstance(part, ToolCall):
            calls.append(part)
            continue
        entry = assembled.setdefault(part.index, {"id": None, "name": None, "arguments": []})
        entry["id"] = entry["id"] or part.id
        entry["name"] = entry["name"] or part.name
        entry["arguments"].append(part.arguments)
    problem = None
    for index in sorted(assembled):
        entry = assembled[index]
        raw = "".join(entry["arguments"])
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            problem = problem or f"the arguments of tool call {entry['name']!r} are not a JSON object: {_shown(raw)}"
            arguments = {}
        calls.append(ToolCall(entry["id"] or f"call_{index}", entry["name"] or "", arguments, raw))
    return calls, problem
