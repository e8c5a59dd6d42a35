"""Property-based fuzzing of the gateway from its own OpenAPI schema (schemathesis): whatever
the input, no 5xx and no response that breaks the schema. Bounded so that it fits `make test`;
`make fuzz` runs a longer budget."""

from __future__ import annotations

import asyncio
import os

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
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


async def test_no_input_makes_the_gateway_fail(gateway_url: str) -> None:
    fuzzed = await asyncio.to_thread(fuzz, gateway_url)  # the gateway runs on this event loop
    assert "POST /v1/chat/completions" in fuzzed and "POST /v1/embeddings" in fuzzed
    assert "POST /v1/messages" in fuzzed and "POST /v1/responses" in fuzzed
