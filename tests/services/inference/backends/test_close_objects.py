from services.inference.backends.json_schema_grammar import close_objects


def test_objects_with_properties_are_closed_unless_they_say_otherwise() -> None:
    schema = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        "$defs": {"open": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["inner"]["additionalProperties"] is False
    assert closed["$defs"]["open"]["additionalProperties"] is True
    assert "additionalProperties" not in schema  # the caller's schema is left alone
