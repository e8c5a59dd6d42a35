"""JSON Schema -> what llama.cpp's JSON-schema-to-GBNF converter can enforce exactly.

The converter (llama-cpp-python's port) ignores some keywords, numeric ranges
among them; ignoring a constraint would let invalid output through. So the
schema is rewritten where an exact rewrite exists (a narrow integer range becomes
the enum of its values, other bounds an exact rule of their own: numeric_ranges.py)
and refused, naming the keyword and where it is, where none does. Nothing
degrades silently.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from services.common.errors import InvalidArgument
from services.inference.backends.numeric_ranges import integer_rule, number_rule

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
    if isinstance(node.get("const"), str) and node["const"].startswith(_PLACEHOLDER):
        _refuse(f"a constant starting with '{_PLACEHOLDER}' (reserved)", path)
    if "format" in node and node.get("type") == "string" and node["format"] not in _SUPPORTED_FORMATS:
        _refuse(f"format '{node['format']}'", path)
    # The converter enforces a pattern or a format alone, dropping minLength/maxLength beside it
    # (found by the schema fuzzer: pattern "^[a-z]+$" with maxLength 0 gave "gcm").
    if ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node):
        _refuse("minLength/maxLength together with pattern or format (put the length in the pattern)", path)
    if any(keyword in node for keyword in _RANGE_KEYWORDS):
        _rewrite_range(node, path)
    for key, value in list(node.items()):
        if key in ("properties", "$defs", "definitions"):
            for name, child in value.items():
                _visit(child, f"{path}.{name}")
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf"):
            _visit(value, f"{path}.{key}")


def _rewrite_range(node: dict[str, Any], path: str) -> None:
    """A narrow integer range becomes the enum of its values; any other bounds on an integer or
    a number become a placeholder constant that `with_ranges` swaps for an exact rule."""
    kind = node.get("type")
    if kind not in ("integer", "number"):
        _refuse(f"minimum/maximum on type '{kind or 'any'}' (only integers and numbers have bounds)", path)
    for side, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(node.get(exclusive), bool):  # draft 4: a flag on minimum/maximum, not a number
            flagged = node.pop(exclusive)
            if flagged and side in node:
                node[exclusive] = node.pop(side)
    bounds = {keyword: node.pop(keyword, None) for keyword in _RANGE_KEYWORDS}
    try:
        rule = (integer_rule if kind == "integer" else number_rule)(
            bounds["minimum"], bounds["maximum"], bounds["exclusiveMinimum"], bounds["exclusiveMaximum"]
        )
    except InvalidArgument as error:
        raise InvalidArgument(f"{error.message.rstrip('.')} at {path}.", param="response_format") from error
    low, high = _integer_span(bounds) if kind == "integer" else (None, None)
    if low is not None and high is not None and high - low < MAX_ENUMERATED_RANGE:
        allowed = [v for v in range(low, high + 1) if "enum" not in node or v in node["enum"]]
        node.pop("type")
        node["enum"] = allowed
        return
    if "enum" in node or "const" in node:
        return  # the listed values are what the grammar allows; bounds on them need no rule
    node.clear()
    node["const"] = _PLACEHOLDER + rule.encode().hex()


def _integer_span(bounds: dict[str, Any]) -> tuple[int | None, int | None]:
    lows = [math.ceil(bounds["minimum"])] if bounds["minimum"] is not None else []
    lows += [math.floor(bounds["exclusiveMinimum"]) + 1] if bounds["exclusiveMinimum"] is not None else []
    highs = [math.floor(bounds["maximum"])] if bounds["maximum"] is not None else []
    highs += [math.ceil(bounds["exclusiveMaximum"]) - 1] if bounds["exclusiveMaximum"] is not None else []
    return (max(lows) if lows else None), (min(highs) if highs else None)


# The converter writes a string constant as a GBNF literal; the rule travels inside it, in hex
# so that no escaping touches it.
_PLACEHOLDER = "llmmesh-numeric-range-"
_PLACEHOLDER_LITERAL = re.compile(r'"\\"' + _PLACEHOLDER + r'([0-9a-f]+)\\""')


def with_ranges(gbnf: str) -> str:
    """The converter's GBNF with each numeric-range placeholder replaced by its rule."""
    return _PLACEHOLDER_LITERAL.sub(lambda match: f"({bytes.fromhex(match.group(1)).decode()}) space", gbnf)


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
