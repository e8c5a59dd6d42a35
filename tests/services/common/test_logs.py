"""Structured logs: JSON lines carrying the request id and extra fields."""

from __future__ import annotations

import json
import logging

from services.common.logs import REQUEST_ID, JsonFormatter, request_id_from


def test_json_lines_carry_the_request_id_and_extra_fields() -> None:
    token = REQUEST_ID.set("req-42")
    try:
        record = logging.getLogger("services.inference.server.engine").makeRecord(
            "services.inference.server.engine", logging.INFO, __file__, 1, "generation %s", ("stop",), None,
            extra={"model": "mock", "duration_ms": 12.5},
        )  # fmt: skip
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "generation stop" and line["level"] == "info"
    assert line["request_id"] == "req-42" and line["model"] == "mock" and line["duration_ms"] == 12.5
    assert line["logger"] == "services.inference.server.engine" and line["time"].endswith("Z")


def test_request_ids_are_kept_only_when_safe() -> None:
    assert request_id_from("abc-123") == "abc-123"
    for unsafe in ("", None, "a b", "x" * 200, "ab\nc"):
        assert request_id_from(unsafe).startswith("req-")
