"""A client's JSON Schema is checked before any grammar is built: malformed ones and ones
whose repetitions would blow up a grammar are a 400 naming the parameter, common ones pass."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field, NonNegativeInt, PositiveFloat

from services.common.errors import InvalidArgument
from services.common.schema_limits import MAX_REPETITION, checked_schema


def _check(schema: object) -> dict:
    return checked_schema(json.dumps(schema), param="response_format")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": [{"a": {"type": "string"}}]},
        {"$defs": [1, 2]},
        {"type": "integer", "minimum": "a"},
        {"type": "number", "exclusiveMaximum": "a"},
        {"enum": 3},
        {"type": "strnig"},
        {"type": "object", "required": "a"},
        {"type": "string", "pattern": "(unclosed"},
        {"type": "object", "exclusiveMinimum": True},  # draft 4's flag is not a number in 2020-12
        [1, 2],
        "not a schema",
    ],
)
def test_malformed_schemas_are_invalid_arguments_naming_the_parameter(schema: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        _check(schema)
    assert raised.value.param == "response_format"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3000}}},
        {"type": "array", "maxItems": 100_000},
        {"type": "array", "minItems": 100_000_000},
        {"type": "string", "pattern": "^a{0,3000}$"},
        {"type": "string", "pattern": "^(a{0,100}){0,100}$"},  # nested counts multiply
        {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 500} for i in range(20)}},
        {"$ref": "https://example.com/schema.json"},  # never fetched
        {"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}},
        {"enum": list(range(5000))},
    ],
)
def test_schemas_over_the_grammar_budget_are_refused(schema: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        _check(schema)
    assert raised.value.param == "response_format"


def test_deep_nesting_is_refused_before_anything_recurses_into_it() -> None:
    text = '{"type": "array", "items": ' * 2000 + "{}" + "}" * 2000  # deeper than json.loads recurses
    with pytest.raises(InvalidArgument, match="is not valid JSON"):
        checked_schema(text, param="tools")
    text = '{"type": "array", "items": ' * 40 + "{}" + "}" * 40
    with pytest.raises(InvalidArgument, match="nests deeper"):
        checked_schema(text, param="tools")


def test_an_oversized_schema_is_refused_by_its_length() -> None:
    with pytest.raises(InvalidArgument, match="characters"):
        _check({"type": "object", "description": "x" * 100_000})


class Order(BaseModel):
    quantity: NonNegativeInt
    price: PositiveFloat
    note: str = Field(max_length=200)
    tags: list[str] = Field(max_length=10)


@pytest.mark.parametrize(
    "schema",
    [
        Order.model_json_schema(),
        {"type": "integer", "minimum": 0},
        {"type": "string", "maxLength": MAX_REPETITION},
        {"type": "string", "pattern": "^[a-z]{2,8}-\\d{3}$"},
        {"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}},
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "number",
            "minimum": 0,
            "exclusiveMinimum": True,
        },
    ],
)
def test_common_schemas_pass(schema: object) -> None:
    assert _check(schema) == schema
