"""An engine's log: bounded kept lines, bounded lines, and followers that cannot hold memory."""

from __future__ import annotations

import asyncio

from services.inference.backends.managed import engine_log
from services.inference.backends.managed.engine_log import EngineLog


async def test_followers_get_the_kept_lines_then_new_ones() -> None:
    log = EngineLog()
    log.append("one")
    follower = log.follow()
    assert await anext(follower) == "one"
    next_line = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0)
    log.append("two")
    assert await next_line == "two"
    await follower.aclose()
    assert not log._followers  # a reader that stops is forgotten


async def test_everything_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(engine_log, "FOLLOWER_BACKLOG", 2)
    log = EngineLog()
    log.append("x" * 100_000)
    assert len(log.tail(1)[0]) == engine_log.LINE_LIMIT
    for index in range(engine_log.KEPT_LINES + 10):
        log.append(str(index))
    assert len(log.tail(10_000)) == engine_log.KEPT_LINES and log.tail(1) == [str(engine_log.KEPT_LINES + 9)]
    slow = log.follow()
    for _ in range(engine_log.KEPT_LINES):
        await anext(slow)  # the kept lines; now it lags
    for index in range(5):
        log.append(f"new {index}")  # past its backlog of 2: it is cut off rather than buffering
    assert [line async for line in slow] == []
    assert not log._followers
