"""Property-based fuzzing of the gateway from its own OpenAPI schema (schemathesis): whatever
the input, no 5xx and no response that breaks the schema. Bounded so that it fits `make test`;
`make fuzz` runs a longer budget."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

EXAMPLES_PER_OPERATION = int(os.environ.get("LLMMESH_SCHEMATHESIS_EXAMPLES", "12"))  # `make fuzz` runs more
# Jobs would run on the session's real model for minutes; the scheduler's own tests fuzz nothing
# but check every bad body explicitly (tests/services/gateway/test_jobs.py).
SKIPPED = {("POST", "/internal/queue/enqueue")}


def fuzz(gateway_url: str) -> list[str]:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{gateway_url}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = []
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same inputs every run: a failure reproduces
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # Never hand the fuzzer a real model with a huge max_tokens: keep generations short.
            for limit in ("max_tokens", "max_output_tokens"):
                if isinstance(case.body, dict) and isinstance(case.body.get(limit), int):
                    case.body[limit] = min(case.body[limit], 4)
            case.call_and_validate(
                base_url=gateway_url,
                checks=[not_a_server_error, content_type_conformance, response_schema_conformance],
                timeout=60,
            )

        check()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    return fuzzed


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


# What JSON allows and UTF-8 does not, NUL bytes, and forged cursors (page tokens, `after`).
HOSTILE = [
    "a\ud800",
    "\udfff",
    "a\ud800\udc00\ud800",
    "a\x00b",
    "\x00",
    _cursor("[" * 3000),
    _cursor('["2026-01-01T00:00:00+00:00", "job-\x00"]'),
    _cursor('["not a time", 3]'),
    _cursor("{}"),
    "!!not base64!!",
    "x" * 5000,
]
URL_SAFE = [value for value in HOSTILE if value.encode("utf-8", "surrogatepass").isascii() and "\x00" not in value]


def _poison(value: Any, draw: Any, url: bool) -> Any:
    """`value` with every string in it (keys too) swapped for a hostile one, drawn by Hypothesis;
    in a URL only what a URL can carry (a client cannot encode a lone surrogate)."""
    if isinstance(value, str):
        return draw(st.sampled_from(URL_SAFE + ["a%00b"] if url else HOSTILE))
    if isinstance(value, dict):
        return {(_poison(k, draw, url) if draw(st.booleans()) else k): _poison(v, draw, url) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v, draw, url) for v in value]
    return value


def _send_hostile(http: httpx.Client, operation: Any, case: schemathesis.Case, draw: Any) -> httpx.Response:
    """The case with every string in its path, query and body made hostile."""
    path = operation.path
    for name, value in (case.path_parameters or {}).items():
        path = path.replace(f"{{{name}}}", str(_poison(str(value), draw, url=True)))
    query = _poison(dict(case.query or {}), draw, url=True)
    body = _poison(case.body, draw, url=False) if isinstance(case.body, dict | list) else None
    if isinstance(body, dict):
        for limit in ("max_tokens", "max_output_tokens"):
            if isinstance(body.get(limit), int):
                body[limit] = min(body[limit], 4)
    return http.request(
        operation.method.upper(),
        path,
        params=query,
        content=json.dumps(body).encode() if body is not None else None,  # a lone surrogate as JSON's escape
        headers={"content-type": "application/json"} if body is not None else None,
    )


def fuzz_hostile_strings(gateway_url: str) -> dict[str, int]:
    """Every operation, every string parameter (body, query, path) made hostile: no 5xx."""
    schema = schemathesis.openapi.from_dict(httpx.get(f"{gateway_url}/openapi.json").json())
    seen = {"operations": 0, "requests": 0, "server_errors": 0}
    with httpx.Client(base_url=gateway_url, timeout=60) as http:
        for operation in (result.ok() for result in schema.get_all_operations()):
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue

            def run(operation: Any) -> None:
                @given(case=operation.as_strategy(), data=st.data())
                @settings(
                    max_examples=EXAMPLES_PER_OPERATION,
                    deadline=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def check(case: schemathesis.Case, data: st.DataObject) -> None:
                    try:
                        response = _send_hostile(http, operation, case, data.draw)
                    except httpx.InvalidURL:  # over httpx's 64 KiB URL: the client cannot send it
                        reject()
                    seen["requests"] += 1
                    seen["server_errors"] += response.status_code >= 500
                    assert response.status_code < 500, (operation.method, operation.path, response.text[:500])

                check()

            run(operation)
            seen["operations"] += 1
    return seen


async def test_hostile_strings_in_every_parameter_never_make_the_gateway_fail(gateway_url: str) -> None:
    seen = await asyncio.to_thread(fuzz_hostile_strings, gateway_url)
    print(f"hostile-string fuzz: {seen}")
    assert seen["operations"] > 20 and seen["server_errors"] == 0


async def test_no_input_makes_the_gateway_fail(gateway_url: str) -> None:
    fuzzed = await asyncio.to_thread(fuzz, gateway_url)  # the gateway runs on this event loop
    assert "POST /v1/chat/completions" in fuzzed and "POST /v1/embeddings" in fuzzed
    assert "POST /v1/messages" in fuzzed and "POST /v1/responses" in fuzzed
