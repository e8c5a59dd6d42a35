"""Fuzzing JSON schemas against the real gguf model: Hypothesis writes schemas (nested objects,
arrays, enums, patterns, one- and two-sided bounds, $defs and $ref, anyOf), sometimes valid,
sometimes over budget, sometimes malformed. Every answer is below 500, and an answer that
finished is valid against its schema. `make test` runs a short budget; `make fuzz` a long one
(LLMMESH_FUZZ_EXAMPLES)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
import jsonschema
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import GEMMA

EXAMPLES = int(os.environ.get("LLMMESH_FUZZ_EXAMPLES", "30"))

counts = st.one_of(st.integers(0, 12), st.integers(0, 5000), st.sampled_from([10**8, -1, 2**40]))
numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from(["a", True, None]))
patterns = st.one_of(
    st.sampled_from(["^[a-z]+$", "^\\d{3}-\\d{4}$", "^(ab|cd)*$", "^a{0,3000}$", "^(a{0,90}){0,90}$", "(", "[z-a]"]),
    st.builds(lambda low, high: f"^x{{{low},{high}}}$", st.integers(0, 50), st.integers(0, 900)),
)


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    string = st.fixed_dictionaries(
        {"type": st.just("string")}, optional={"minLength": counts, "maxLength": counts, "pattern": patterns}
    )
    bounds = {"minimum": numbers, "maximum": numbers, "exclusiveMinimum": numbers, "exclusiveMaximum": numbers}
    integer = st.fixed_dictionaries({"type": st.just("integer")}, optional=bounds)
    number = st.fixed_dictionaries({"type": st.just("number")}, optional=bounds)
    enum = st.fixed_dictionaries({"enum": st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=4)})
    odd = st.sampled_from([{"type": "boolean"}, {"const": "k"}, {"type": "null"}, {"enum": 3}, {"type": "strnig"}])
    return st.one_of(string, integer, number, enum, odd)


def _children(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.text("abcdefgh", min_size=1, max_size=4)
    obj = st.builds(
        lambda properties, required: {
            "type": "object",
            "properties": properties,
            "required": [name for name in properties if name in required],
        },
        st.dictionaries(names, inner, max_size=4),
        st.sets(names),
    )
    array = st.fixed_dictionaries(
        {"type": st.just("array"), "items": inner}, optional={"minItems": counts, "maxItems": counts}
    )
    any_of = st.builds(lambda options: {"anyOf": options}, st.lists(inner, min_size=1, max_size=3))
    return st.one_of(obj, array, any_of)


def _with_defs(schema: dict[str, Any], defined: dict[str, Any] | None) -> dict[str, Any]:
    if defined is None:
        return schema
    return {"$defs": {"d": defined}, "type": "object", "properties": {"r": {"$ref": "#/$defs/d"}, "s": schema}}


schemas = st.builds(_with_defs, st.recursive(_leaf(), _children, max_leaves=12), st.one_of(st.none(), _leaf()))


def fuzz(gateway_url: str) -> dict[str, int]:
    seen = {"examples": 0, "ok": 0, "refused": 0, "validated": 0}
    with httpx.Client(base_url=gateway_url, timeout=120) as http:

        @given(schema=schemas, as_tool=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,  # the same schemas every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(schema: dict[str, Any], as_tool: bool) -> None:
            body: dict[str, Any] = {
                "model": GEMMA,
                "messages": [{"role": "user", "content": "Answer in JSON."}],
                "max_tokens": 12,
                "temperature": 0,
            }
            if as_tool:
                body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
                body["tool_choice"] = "required"
            else:
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
            response = http.post("/v1/chat/completions", json=body)
            seen["examples"] += 1
            assert response.status_code < 500, (schema, response.text)
            if response.status_code != 200:
                seen["refused"] += 1
                assert response.json()["error"]["param"] in ("response_format", "tools"), response.text
                return
            seen["ok"] += 1
            choice = response.json()["choices"][0]
            if choice["finish_reason"] == "stop" and not as_tool:
                jsonschema.validate(json.loads(choice["message"]["content"]), schema)
                seen["validated"] += 1
            if choice["finish_reason"] == "tool_calls":
                arguments = json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])
                jsonschema.validate(arguments, schema)
                seen["validated"] += 1

        check()
        assert http.get("/health").status_code == 200  # nothing crashed
    return seen


async def test_fuzzed_schemas_never_crash_or_500(gateway_url: str) -> None:
    seen = await asyncio.to_thread(fuzz, gateway_url)  # the gateway runs on this event loop
    print(f"schema fuzz: {seen}")
    assert seen["examples"] >= EXAMPLES and seen["ok"] and seen["refused"]
