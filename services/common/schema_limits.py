"""A client's JSON Schema, checked before any grammar is built from it, for every backend.

Grammar compilers expand counted repetitions: llama-cpp-python writes `maxLength: 3000` as
3000 nested optional groups, which llama.cpp refuses, and `minItems: 100000000` as a string
of gigabytes. So a schema is first checked against JSON Schema's own meta-schema (a malformed
one is a 400 naming the keyword, never a 500), then against a budget: its size and depth,
each counted repetition, and what all of them expand to together.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from services.common.errors import InvalidArgument

MAX_SCHEMA_CHARS = 64 * 1024
MAX_NODES = 2_000  # subschemas and their keywords
MAX_DEPTH = 32
MAX_REPETITION = 512  # one counted bound: minLength, maxItems, a regex's {m,n}, ...
MAX_TOTAL_REPETITION = 4_096  # all of them together: the grammar's size
MAX_PATTERN_CHARS = 1_000
MAX_ENUM_VALUES = 1_000

_COUNTED = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")


def checked_schema(text: str, param: str) -> dict[str, Any]:
    """The schema in `text`, parsed; InvalidArgument naming `param` if it is malformed or over budget."""
    try:
        _check(text)
    except InvalidArgument as error:
        raise InvalidArgument(error.message, param=param) from error
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.lru_cache(maxsize=256)  # the same schema comes with every request of a client
def _check(text: str) -> None:
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidArgument(f"The JSON schema is {len(text)} characters; the limit is {MAX_SCHEMA_CHARS}.")
    try:
        schema = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"The JSON schema is not valid JSON: {error}") from error
    if not isinstance(schema, dict):
        raise InvalidArgument("The JSON schema must be a JSON object.")
    _Budget().visit(schema, "$", 0)  # first: the meta-schema check recurses as deep as the schema
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except SchemaError as error:
        where = "$" + "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.path)
        raise InvalidArgument(f"Invalid JSON schema at {where}: {error.message}") from error


class _Budget:
    def __init__(self) -> None:
        self.nodes = 0
        self.repetition = 0

    def visit(self, node: Any, path: str, depth: int) -> None:
        # Grammars name each subschema once as a rule, so an array's items add their own
        # repetitions to the total instead of multiplying them; a regex's do multiply.
        if not isinstance(node, dict):
            if not isinstance(node, bool):  # true/false are schemas too
                raise InvalidArgument(f"Invalid JSON schema at {path}: a schema must be an object or a boolean.")
            return
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"The JSON schema nests deeper than {MAX_DEPTH} levels at {path}.")
        self.nodes += 1 + len(node)
        if self.nodes > MAX_NODES:
            raise InvalidArgument(f"The JSON schema has more than {MAX_NODES} subschemas and keywords.")
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            raise InvalidArgument(f"Only local $ref ('#/...') is supported, at {path}.")
        if isinstance(node.get("enum"), list) and len(node["enum"]) > MAX_ENUM_VALUES:
            raise InvalidArgument(f"An enum of more than {MAX_ENUM_VALUES} values at {path}.")
        for keyword in _COUNTED:
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._repeat(value, f"{path}.{keyword}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            self._repeat(_pattern_size(pattern, f"{path}.pattern"), f"{path}.pattern")
        for keyword in _SUBSCHEMA_MAPS:
            if isinstance(node.get(keyword), dict):
                for name, child in node[keyword].items():
                    self.visit(child, f"{path}.{keyword}.{name}", depth + 1)
        for keyword in _SUBSCHEMA_LISTS:
            if isinstance(node.get(keyword), list):
                for index, child in enumerate(node[keyword]):
                    self.visit(child, f"{path}.{keyword}[{index}]", depth + 1)
        for keyword in _SUBSCHEMAS:
            if keyword in node and not isinstance(node[keyword], list):
                self.visit(node[keyword], f"{path}.{keyword}", depth + 1)

    def _repeat(self, count: float, where: str) -> None:
        if count > MAX_REPETITION:
            raise InvalidArgument(f"{where} is {count:g}; the limit for a counted repetition is {MAX_REPETITION}.")
        self.repetition += int(count)
        if self.repetition > MAX_TOTAL_REPETITION:
            raise InvalidArgument(
                f"The JSON schema's repetitions expand to more than {MAX_TOTAL_REPETITION} (at {where}): "
                "lower maxLength, maxItems or the pattern's counts."
            )


def _pattern_size(pattern: str, where: str) -> int:
    """What the regex's counted repetitions expand to: x{0,300} is 300, (x{0,30}){0,30} is 900."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgument(f"{where} is {len(pattern)} characters; the limit is {MAX_PATTERN_CHARS}.")
    try:
        parsed = _regex_parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as error:
        raise InvalidArgument(f"{where} is not a valid regular expression: {error}") from error
    return _expanded(parsed.data if hasattr(parsed, "data") else list(parsed), where)


def _expanded(items: Any, where: str) -> int:
    size = 0
    for op, argument in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = argument
            count = low + 1 if high == _regex_constants.MAXREPEAT else high
            if count > MAX_REPETITION:
                raise InvalidArgument(f"{where} repeats {count} times; the limit is {MAX_REPETITION}.")
            size += count * max(_expanded(sub, where), 1) if count > 1 else _expanded(sub, where)
        elif name == "SUBPATTERN":
            size += _expanded(argument[-1], where)
        elif name == "BRANCH":
            size += sum(_expanded(branch, where) for branch in argument[1])
        elif name in ("ASSERT", "ASSERT_NOT"):
            size += _expanded(argument[1], where)
        else:
            size += 1
        if size > MAX_TOTAL_REPETITION:
            raise InvalidArgument(f"{where} expands to more than {MAX_TOTAL_REPETITION} characters.")
    return size


# The standard library's regex parser (`re._parser`, `sre_parse` before 3.11): JSON Schema
# patterns are ECMA-262 regexes, close enough for counting what they repeat.
try:
    from re import _constants as _regex_constants  # type: ignore[attr-defined]
    from re import _parser as _regex_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _regex_constants
    import sre_parse as _regex_parser
