"""``response_format=`` with a JSON-schema dict: the schema is checked as a JSON Schema (Draft
2020-12, by ``jsonschema``) before anything is sent, and the reply is validated with every
keyword, the error naming where it fails and which keyword. Through the pipeline on the
``testing`` backend, and the wire of each provider that takes a schema (the openai and anthropic
SDKs over a socket, and Ollama's), which all end in the same validation."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from chatplug import ErrorKind, LLMResponse, generate_completion_async, generate_completion_sync
from chatplug.testing import scripted

from .childproc import python
from .conftest import OLLAMA_JSON
from .fakeserver import FakeServer, Reply, fixture
from .providers import ANTHROPIC, OPENAI, Provider, text_reply

#: The issue's schema: ``{"a": 500, "extra": 1}`` used to pass it.
BOUNDED = {
    "type": "object",
    "properties": {"a": {"type": "integer", "maximum": 10}},
    "required": ["a"],
    "additionalProperties": False,
}


def ask(schema: Any, reply: str) -> LLMResponse:
    with scripted(reply):
        return generate_completion_sync("Hi", response_format=schema)


def test_the_issue_s_reply_breaks_two_rules_and_the_error_names_where_and_which() -> None:
    both = ask(BOUNDED, '{"a": 500, "extra": 1}')
    assert both.error_kind is ErrorKind.INVALID_OUTPUT and both.parsed is None
    assert both.content == '{"a": 500, "extra": 1}'  # the raw text is kept
    assert "(and 1 more problem)" in str(both.error)
    too_big = ask(BOUNDED, '{"a": 500}')
    assert too_big.error == (
        "testing: the reply does not fit the schema 'response': at $.a, 500 is greater than the maximum of 10 "
        "(keyword 'maximum': 10)."
    )
    extra = ask(BOUNDED, '{"a": 5, "extra": 1}')
    assert extra.error == (
        "testing: the reply does not fit the schema 'response': at $, Additional properties are not allowed "
        "('extra' was unexpected) (keyword 'additionalProperties': false)."
    )
    assert ask(BOUNDED, '{"a": 5}').parsed == {"a": 5}


#: Keywords the hand-written rules did not know, each with a reply that breaks it and the words
#: the error says: where (a JSON path) and which keyword.
BROKEN: list[tuple[dict[str, Any], str, str]] = [
    ({"type": "number", "minimum": 0}, "-1", "at $, -1 is less than the minimum of 0 (keyword 'minimum': 0)"),
    ({"type": ["integer", "null"], "maximum": 3}, "5", "at $, 5 is greater than the maximum of 3"),
    ({"type": "number", "exclusiveMaximum": 1}, "1", "(keyword 'exclusiveMaximum': 1)"),
    ({"type": "integer", "multipleOf": 5}, "7", "(keyword 'multipleOf': 5)"),
    ({"type": "string", "minLength": 3}, '"ab"', "(keyword 'minLength': 3)"),
    ({"type": "string", "pattern": "^[A-Z]{3}$"}, '"usd"', "(keyword 'pattern': \"^[A-Z]{3}$\")"),
    ({"type": "array", "maxItems": 1}, "[1, 2]", "(keyword 'maxItems': 1)"),
    ({"type": "array", "uniqueItems": True}, "[1, 1]", "(keyword 'uniqueItems': true)"),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, "[1]", "at $[0], 1 is not of type 'string'"),
    ({"type": "array", "contains": {"const": "x"}}, '["y"]', "(keyword 'contains'"),
    ({"type": "object", "minProperties": 1}, "{}", "(keyword 'minProperties': 1)"),
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, '{"Bad": 1}', "(keyword 'pattern'"),
    ({"const": "yes"}, '"no"', "(keyword 'const': \"yes\")"),
    ({"enum": [0, 1]}, "false", "at $, False is not one of [0, 1] (keyword 'enum': [0, 1])"),  # False == 0 in Python
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "3", "(keyword 'oneOf'"),
    ({"not": {"type": "null"}}, "null", "(keyword 'not'"),
    (
        {"if": {"properties": {"kind": {"const": "card"}}}, "then": {"required": ["number"]}},
        '{"kind": "card"}',
        "at $, 'number' is a required property (keyword 'required'",
    ),
    (
        {"type": "object", "properties": {"to": {"type": "object", "properties": {"zip": {"type": "string"}}}},
         "dependentRequired": {"to": ["name"]}},
        '{"to": {"zip": 1}, "name": "x"}',
        "at $.to.zip, 1 is not of type 'string'",
    ),
    (
        {"$defs": {"Item": {"type": "object", "required": ["sku"]}},
         "type": "array", "items": {"$ref": "#/$defs/Item"}},
        '[{"sku": 1}, {}]',
        "at $[1], 'sku' is a required property",
    ),
    (
        {"type": "object", "properties": {"a b": {"enum": ["x"]}}},
        '{"a b": "y"}',
        "at $['a b'], 'y' is not one of ['x']",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("schema", "reply", "says"), BROKEN, ids=[str(i) for i in range(len(BROKEN))])
def test_every_keyword_counts(schema: dict[str, Any], reply: str, says: str) -> None:
    response = ask(schema, reply)
    assert response.error_kind is ErrorKind.INVALID_OUTPUT, response
    assert says in str(response.error)


def test_a_draft_07_schema_is_read_as_draft_07() -> None:
    """Its ``$schema`` is honoured: there ``items`` may be a list, one schema for each position."""
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}]}
    assert ask(schema, '["a", 2]').parsed == ["a", 2]
    assert "at $[0], 1 is not of type 'string'" in str(ask(schema, "[1]").error)


def test_openai_s_wrapper_is_validated_the_same_under_its_name() -> None:
    wrapped = {"type": "json_schema", "json_schema": {"name": "Bounded", "strict": True, "schema": BOUNDED}}
    response = ask(wrapped, '{"a": 11}')
    assert response.error_kind is ErrorKind.INVALID_OUTPUT
    assert "the schema 'Bounded': at $.a, 11 is greater than the maximum of 10" in str(response.error)


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "integr"}, "response_format is not a valid JSON Schema: at $.type, 'integr' is not valid"),
        ({"type": "object", "properties": {"n": {"maximum": "10"}}},
         "at $.properties.n.maximum, '10' is not of type 'number'"),
        ({"type": "object", "required": "n"}, "at $.required, 'n' is not of type 'array'"),
        ({"type": "string", "pattern": "(["}, "at $.pattern, '([' is not a 'regex'"),
        ({"$schema": 7}, "at $['$schema'], 7 is not of type 'string'"),
        ({"properties": {"a": {"$ref": "#/$defs/Missing"}}}, "has $ref '#/$defs/Missing', which leads nowhere"),
        ({"$ref": "https://example.com/schemas/address.json"}, "chatplug fetches no schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objet"}}}, "'objet' is not valid"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, "schema must be a dict"),
        ({"type": "json_object"}, "is an OpenAI mode, not a schema"),
        ({"type": "object", "enum": [{1, 2}]}, "response_format's schema must be JSON data"),
        ({"type": "number", "maximum": float("nan")}, "response_format's schema must be JSON data"),
    ],
)  # fmt: skip
def test_a_schema_that_is_not_one_is_invalid_input_before_anything_is_sent(schema: dict[str, Any], says: str) -> None:
    with scripted('{"a": 1}') as fake:
        responses = [
            generate_completion_sync("Hi", response_format=schema),
            asyncio.run(generate_completion_async("Hi", response_format=schema)),
        ]
    for response in responses:
        assert response.error_kind is ErrorKind.INVALID_INPUT and says in str(response.error), response.error
    assert fake.requests == []


def test_a_reply_nested_too_deeply_to_check_is_invalid_output_not_an_exception() -> None:
    nested = "[" * 900 + "]" * 900  # JSON that parses, deeper than validation's recursion reaches
    response = ask({"type": "array", "items": {"$ref": "#"}}, nested)
    assert response.error_kind is ErrorKind.INVALID_OUTPUT and "nested too deeply" in str(response.error)
    assert response.content == nested


def test_the_caller_s_schema_is_read_never_changed_and_a_changed_one_counts_anew() -> None:
    schema = copy.deepcopy(BOUNDED)
    assert ask(schema, '{"a": 50}').error_kind is ErrorKind.INVALID_OUTPUT
    assert schema == BOUNDED
    schema["properties"]["a"]["maximum"] = 100  # the caller's own dict, changed between calls
    assert ask(schema, '{"a": 50}').parsed == {"a": 50}
    assert ask(BOUNDED, '{"a": 50}').error_kind is ErrorKind.INVALID_OUTPUT


def test_jsonschema_is_imported_for_a_schema_dict_only() -> None:
    proc = python(
        """
        import sys
        import chatplug
        from chatplug.testing import scripted
        from pydantic import BaseModel

        class Point(BaseModel):
            x: int

        print("jsonschema" in sys.modules)
        with scripted('{"x": 1}', '{"x": 1}'):
            assert chatplug.generate_completion_sync("Hi", response_format=Point).parsed == Point(x=1)
            print("jsonschema" in sys.modules)
            chatplug.generate_completion_sync("Hi", response_format={"type": "object"})
        print("jsonschema" in sys.modules)
        """
    )
    assert proc.stdout.split() == ["False", "False", "True"], proc.stderr


# -- on each provider's wire ---------------------------------------------------------------


@pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def test_the_openai_and_anthropic_replies_are_validated_with_every_keyword(
    provider: Provider, request: pytest.FixtureRequest
) -> None:
    server: FakeServer = request.getfixturevalue(f"{provider.backend}_server")
    provider.route(server, text_reply(provider, '{"a": 500}'))
    responses = [
        generate_completion_sync("A number?", response_format=BOUNDED),
        asyncio.run(generate_completion_async("A number?", response_format=BOUNDED)),
    ]
    for response in responses:
        assert response.error_kind is ErrorKind.INVALID_OUTPUT and response.content == '{"a": 500}'
        assert "at $.a, 500 is greater than the maximum of 10 (keyword 'maximum': 10)" in str(response.error)
    assert len(server.requests) == 2
    assert generate_completion_sync("A number?", response_format={"type": "integr"}).error_kind == "invalid_input"
    assert len(server.requests) == 2  # the bad schema was not sent


def test_the_ollama_reply_is_validated_with_every_keyword(ollama: FakeServer) -> None:
    body = json.loads(fixture("ollama/chat_nonstream_200.json"))
    body["message"]["content"] = '{"a": 5, "extra": 1}'
    ollama.route("POST", "/api/chat", Reply(200, json.dumps(body).encode(), dict(OLLAMA_JSON)))
    response = generate_completion_sync("A number?", response_format=BOUNDED)
    assert response.error_kind is ErrorKind.INVALID_OUTPUT
    assert "at $, Additional properties are not allowed ('extra' was unexpected)" in str(response.error)
    assert ollama.requests[0].json()["format"] == BOUNDED  # the schema is sent as it was given
