"""JSON Schema -> what llama.cpp's JSON-schema-to-GBNF converter can enforce exactly.

The converter (llama-cpp-python's port) ignores some keywords, numeric ranges
among them; ignoring a constraint would let invalid output through. So the
schema is rewritten where an exact rewrite exists (an integer range becomes the
enum of its values) and refused, naming the keyword and where it is, where none
does. Nothing degrades silently.
"""

from __future__ import annotations

import copy
from typing import Any

from services.common.errors import InvalidArgument

# Keywords the converter does not enforce and that have no exact rewrite.
_UNSUPPORTED = (
    "multipleOf",
    "uniqueItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "minContains",
    "maxContains",
    "patternProperties",
    "propertyNames",
    "dependentRequired",
    "dependentSchemas",
    "minProperties",
    "maxProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
)
_RANGE_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SUPPORTED_FORMATS = ("date", "time", "date-time", "uuid")
MAX_ENUMERATED_RANGE = 256  # each value is a grammar alternative: wider ranges slow decoding


def enforceable(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema the converter enforces exactly, equivalent to `schema`; or InvalidArgument."""
    rewritten = copy.deepcopy(schema)
    _visit(rewritten, "$")
    return rewritten


def _visit(node: Any, path: str) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _visit(item, f"{path}[{index}]")
        return
    if not isinstance(node, dict):
        return
    for keyword in _UNSUPPORTED:
        if keyword in node:
            _refuse(keyword, path)
    if "format" in node and node.get("type") == "string" and node["format"] not in _SUPPORTED_FORMATS:
        _refuse(f"format '{node['format']}'", path)
    if any(keyword in node for keyword in _RANGE_KEYWORDS):
        _rewrite_range(node, path)
    for key, value in list(node.items()):
        if key in ("properties", "$defs", "definitions"):
            for name, child in value.items():
                _visit(child, f"{path}.{name}")
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            _visit(value, f"{path}.{key}")


def _rewrite_range(node: dict[str, Any], path: str) -> None:
    if node.get("type") != "integer":
        _refuse(f"minimum/maximum on type '{node.get('type', 'any')}' (only integer ranges are enforced)", path)
    low = node.pop("minimum", None)
    high = node.pop("maximum", None)
    if "exclusiveMinimum" in node:
        low = max(low, node.pop("exclusiveMinimum") + 1) if low is not None else node.pop("exclusiveMinimum") + 1
    if "exclusiveMaximum" in node:
        high = min(high, node.pop("exclusiveMaximum") - 1) if high is not None else node.pop("exclusiveMaximum") - 1
    if low is None or high is None:
        _refuse("an integer bound on one side only", path)
    low, high = int(low), int(high)
    if high < low:
        raise InvalidArgument(
            f"Empty integer range at {path}: minimum {low} > maximum {high}.", param="response_format"
        )
    if high - low + 1 > MAX_ENUMERATED_RANGE:
        _refuse(f"an integer range wider than {MAX_ENUMERATED_RANGE} values", path)
    allowed = [v for v in range(low, high + 1) if "enum" not in node or v in node["enum"]]
    node.pop("type")
    node["enum"] = allowed


def _refuse(feature: str, path: str) -> None:
    raise InvalidArgument(f"Unsupported JSON schema feature: {feature} at {path}.", param="response_format")


def close_objects(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties
    and says nothing else, as OpenAI's strict structured outputs and llama.cpp's converter treat
    them: a model must not pad an answer with fields nobody asked for."""
    if isinstance(schema, list):
        return [close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: close_objects(value) for key, value in schema.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["properties"] = {name: close_objects(child) for name, child in schema["properties"].items()}
        closed["additionalProperties"] = False
    return closed
