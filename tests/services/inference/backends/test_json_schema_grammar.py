import pytest

from services.common.errors import InvalidArgument
from services.inference.backends.json_schema_grammar import enforceable


def test_integer_ranges_become_enums() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "exclusiveMaximum": 4}}}
    assert enforceable(schema)["properties"]["n"] == {"enum": [1, 2, 3]}
    assert schema["properties"]["n"]["minimum"] == 1  # the caller's schema is left alone


def test_nested_ranges_are_found() -> None:
    schema = {
        "type": "array",
        "items": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1}, {"type": "string"}]},
    }
    assert enforceable(schema)["items"]["anyOf"][0] == {"enum": [0, 1]}


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "minimum": 0}, "minimum/maximum on type 'string'"),
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 0}, "minLength/maxLength together with pattern"),
        ({"type": "string", "format": "date", "minLength": 3}, "minLength/maxLength together with pattern or format"),
        ({"type": "object", "properties": {"x": {"type": "integer", "multipleOf": 2}}}, "multipleOf at $.x"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "format 'email'"),
    ],
)
def test_unenforceable_features_are_named(schema, named) -> None:
    with pytest.raises(InvalidArgument, match="Unsupported JSON schema feature") as raised:
        enforceable(schema)
    assert named in raised.value.message
