"""Structured logs: JSON lines carrying the request id and extra fields."""

from __future__ import annotations

import asyncio
import json
import logging

from services.common import logs as recent_module
from services.common.logs import REQUEST_ID, JsonFormatter, RecentLines, request_id_from


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


async def test_recent_lines_are_followed_live_and_a_slow_reader_is_told_what_it_missed(monkeypatch) -> None:
    recent = RecentLines()
    logger = logging.getLogger("tests.recent")
    logger.addHandler(recent)
    logger.setLevel(logging.INFO)
    try:
        for n in range(5):
            logger.info("before %d", n)
        lines = recent.follow(tail=2)
        first = [json.loads(await anext(lines))["message"] for _ in range(2)]
        assert first == ["before 3", "before 4"]  # the tail, oldest first
        await asyncio.to_thread(logger.info, "from another thread")
        live = json.loads(await asyncio.wait_for(anext(lines), 5))
        assert live["message"] == "from another thread" and live["level"] == "info"

        monkeypatch.setattr(recent_module, "WATCHER_BACKLOG", 3)
        slow = recent.follow(tail=0)
        waiting = asyncio.ensure_future(anext(slow))  # registers the watcher
        await asyncio.sleep(0)
        for n in range(10):
            logger.info("burst %d", n)
        await asyncio.sleep(0.05)
        got = [json.loads(await waiting)["message"]] + [json.loads(await anext(slow))["message"] for _ in range(2)]
        logger.info("after the burst")  # the next line brings word of those lost
        got += [json.loads(await asyncio.wait_for(anext(slow), 5))["message"] for _ in range(2)]
        assert got[:3] == ["burst 0", "burst 1", "burst 2"]  # the backlog held three
        assert got[3] == "7 lines skipped: too slow" and got[4] == "after the burst", got
        await slow.aclose()
        await lines.aclose()
        assert not recent.watchers  # readers that leave are forgotten
    finally:
        logger.removeHandler(recent)
