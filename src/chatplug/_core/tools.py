"""Tools and structured output: what the caller passes (Python functions, pydantic models, JSON
schema dicts) made into the ``Tool`` and ``ResponseFormat`` every backend receives, and what
comes back (tool-call arguments, structured replies) checked.

Schemas come from pydantic (``TypeAdapter(function).json_schema()`` reads a signature's type
hints; a model's ``model_json_schema()``), descriptions from the docstring (``docstring_parser``).
A structured reply is validated by its pydantic model, or, for a schema dict, by ``jsonschema``.
All three are imported only when a call uses tools or structured output.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import MAX_DEPTH, check_json, freeze, shown, thaw, too_deep
from .exceptions import InvalidInputError, InvalidOutputError


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
    #: The caller's dict said ``"strict": true``: the provider is to hold the arguments to the
    #: schema exactly (OpenAI's and Anthropic's strict mode); a provider without one says so.
    strict: bool = False

    def schema(self) -> dict[str, Any]:
        """The parameters schema as plain data."""
        return thaw(self.parameters)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ResponseFormat:
    """The structured output asked for: a JSON schema, and its name. ``model`` is the pydantic
    class the caller passed (``None`` for a dict); the pipeline validates with it."""

    name: str
    schema: Mapping[str, Any]
    model: Any = field(default=None, compare=False, repr=False)
    #: OpenAI's wrapper said ``"strict": true`` (sent to OpenAI-compatible servers; the others
    #: constrain the output to the schema anyway).
    strict: bool = False

    def json_schema(self) -> dict[str, Any]:
        return thaw(self.schema)  # type: ignore[no-any-return]


CHOICES = ("auto", "required", "none")


def make_tools(tools: object) -> tuple[Tool, ...]:
    """The caller's ``tools=`` list as ``Tool``s; ``InvalidInputError`` for what is none."""
    if not isinstance(tools, (list, tuple)):
        raise InvalidInputError(f"tools must be a list of functions, pydantic models or dicts, got {shown(tools)}.")
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
                f"got {shown(tool)}."
            )
        return Tool(name, str(spec.get("description") or ""), freeze(parameters), strict=_strict(spec, f"tools[{i}]"))
    if _is_model(tool):
        doc = inspect.getdoc(tool) or ""
        return Tool(tool.__name__, doc, freeze(_without_titles(tool.model_json_schema())))  # type: ignore[attr-defined]
    if inspect.isfunction(tool) or inspect.ismethod(tool) or inspect.isbuiltin(tool):
        return function_tool(tool)
    raise InvalidInputError(
        f"tools[{i}] must be a function, a pydantic model class or a JSON-schema dict, got {shown(tool)}."
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
        f"got {shown(choice)}."
    )


#: OpenAI's ``response_format`` modes that are not a schema, and what to pass instead.
MODES = {"json_object": "{'type': 'object'} for any JSON object", "text": "nothing (leave response_format out)"}


def _strict(spec: Mapping[str, Any], where: str) -> bool:
    """A dict's ``"strict"`` (OpenAI's key): absent or a bool."""
    strict = spec.get("strict", False)
    if strict is None:
        return False
    if not isinstance(strict, bool):
        raise InvalidInputError(f"{where}'s 'strict' must be true or false, got {shown(strict)}.")
    return strict


def make_response_format(value: object) -> ResponseFormat:
    """``response_format=``: a pydantic model class, or a JSON-schema dict (also in OpenAI's
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` wrapper), which must
    be a valid JSON Schema: ``InvalidInputError`` otherwise, before anything is sent."""
    if _is_model(value):
        schema = value.model_json_schema()  # type: ignore[attr-defined]
        return ResponseFormat(value.__name__, freeze(schema), model=value)  # type: ignore[attr-defined]
    if isinstance(value, Mapping):
        if isinstance(value.get("type"), str) and value["type"] in MODES:  # ("type" may be a list)
            raise InvalidInputError(
                f"response_format={shown(value)} is an OpenAI mode, not a schema: pass a JSON-schema dict "
                f"or a pydantic model; for this mode, {MODES[value['type']]}."
            )
        name, schema, strict = str(value.get("title") or "response"), value, False
        if value.get("type") == "json_schema" and isinstance(value.get("json_schema"), Mapping):  # OpenAI's wrapper
            name, schema = str(value["json_schema"].get("name") or "response"), value["json_schema"].get("schema", {})
            strict = _strict(value["json_schema"], "response_format's json_schema")
            if not isinstance(schema, Mapping):
                raise InvalidInputError(f"response_format's json_schema.schema must be a dict, got {shown(schema)}.")
        check_json(schema, "response_format's schema")
        _validator(schema)  # checked (and compiled) now, not when the reply comes
        return ResponseFormat(name, freeze(schema), strict=strict)
    raise InvalidInputError(
        f"response_format must be a pydantic model class or a JSON-schema dict, got {shown(value)}."
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
    try:
        validator = _validator(response_format.json_schema())
    except InvalidInputError as exc:  # a ResponseFormat made by hand, not by make_response_format
        raise InvalidOutputError(f"the reply cannot be checked: {exc}") from None
    nested = f"the reply is nested too deeply to check against the schema {response_format.name!r}"
    if too_deep(data):  # as an input may not be: checking goes down ~4 frames a level, recursively
        raise InvalidOutputError(f"{nested} (more than {MAX_DEPTH} levels).")
    try:
        errors = list(validator.iter_errors(data))
    except RecursionError:  # a schema that takes many frames a level
        raise InvalidOutputError(f"{nested}.") from None
    if errors:
        from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]

        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise InvalidOutputError(
            f"the reply does not fit the schema {response_format.name!r}: {_described(best_match(errors))}{more}."
        )
    return data


def _validator(schema: Mapping[str, Any]) -> Any:
    """The ``jsonschema`` validator of ``schema``, checked; ``InvalidInputError`` for a schema
    that is not JSON data or not a valid JSON Schema."""
    try:
        text = json.dumps(schema, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        raise InvalidInputError(f"response_format's schema must be JSON data, got {shown(schema)}.") from None
    return _compiled(text)


@functools.lru_cache(maxsize=128)
def _compiled(text: str) -> Any:
    """The validator of the schema ``text``, cached by its text: checking a schema against the
    meta-schema costs ~3 ms, validating a reply ~25 us, and a program asks for the same few
    schemas again and again. Draft 2020-12 unless the schema's ``$schema`` names another draft;
    ``format`` is an annotation, as Draft 2020-12 has it (not checked)."""
    import referencing
    from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped, unused-ignore]
    from jsonschema.validators import Draft202012Validator, validator_for  # type: ignore[import-untyped, unused-ignore]

    schema = json.loads(text)  # the validator's own copy: nothing the caller holds
    # validator_for fails on a $schema that is not a string; check_schema names that problem.
    string = isinstance(schema.get("$schema"), str)
    cls = validator_for(schema, default=Draft202012Validator) if string else Draft202012Validator
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise InvalidInputError(
            f"response_format is not a valid JSON Schema: {_described(exc, value=False)}."
        ) from None
    _check_refs(schema)
    return cls(schema, registry=referencing.Registry())  # an empty registry: a $ref fetches nothing


def _check_refs(schema: Mapping[str, Any]) -> None:
    """Each ``$ref`` must lead to a part of the schema (or a JSON Schema meta-schema): chatplug
    fetches no schema from anywhere, and a ``$ref`` that leads nowhere fails only once a reply
    is checked. The walk visits the places that hold subschemas (not ``enum`` or ``const``
    values), each with the base URI its ``$id``s make."""
    from jsonschema_specifications import REGISTRY  # type: ignore[import-untyped, unused-ignore]
    from referencing import Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = Resource.from_contents(schema, default_specification=DRAFT202012)
    pending = [(root, REGISTRY.resolver_with_root(root))]
    while pending:
        resource, resolver = pending.pop()
        contents = resource.contents
        for keyword in ("$ref", "$dynamicRef"):
            ref = contents.get(keyword) if isinstance(contents, Mapping) else None
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    raise InvalidInputError(
                        f"response_format's schema has {keyword} {ref!r}, which leads nowhere in it: chatplug "
                        "fetches no schema, so put what it names under the schema's $defs."
                    ) from None
        pending += [(sub, resolver.in_subresource(sub)) for sub in resource.subresources()]


def _described(error: Any, value: bool = True) -> str:
    """A ``jsonschema`` error: where (a JSON path: ``$`` the whole, ``$.a[0]`` ...), what, and
    the keyword that failed with its value."""
    message = _cut(error.message, 300)
    keyword = f"{error.validator!r}: {_cut(json.dumps(error.validator_value), 200)}" if value else repr(error.validator)
    return f"at {error.json_path}, {message} (keyword {keyword})"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _unfenced(text: str) -> str:
    """A reply some models wrap in a Markdown code fence, without it."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        stripped = stripped[stripped.find("\n") + 1 :] if "\n" in stripped else stripped
    return stripped


def _errors(exc: Any) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:5])


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
            problem = problem or f"the arguments of tool call {entry['name']!r} are not a JSON object: {shown(raw)}"
            arguments = {}
        calls.append(ToolCall(entry["id"] or f"call_{index}", entry["name"] or "", arguments, raw))
    return calls, problem
