"""An engine's output: the last lines kept for errors and late readers, and live followers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

KEPT_LINES = 1000
LINE_LIMIT = 4096  # characters: one runaway line cannot grow memory
FOLLOWER_BACKLOG = 1000  # lines a slow follower may lag before it is cut off


class EngineLog:
    """Bounded in every direction: the kept lines, each line, and each follower's backlog."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=KEPT_LINES)
        self._followers: set[asyncio.Queue[str | None]] = set()

    def append(self, line: str) -> None:
        line = line[:LINE_LIMIT]
        self._lines.append(line)
        for follower in list(self._followers):
            try:
                follower.put_nowait(line)
            except asyncio.QueueFull:  # too slow: its stream ends rather than holding lines
                self._followers.discard(follower)
                while not follower.empty():
                    follower.get_nowait()
                follower.put_nowait(None)

    def tail(self, count: int = 20) -> list[str]:
        return list(self._lines)[-count:]

    async def follow(self) -> AsyncIterator[str]:
        """The kept lines, then each new one as it is written, until the reader stops."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(FOLLOWER_BACKLOG)
        backlog = list(self._lines)
        self._followers.add(queue)
        try:
            for line in backlog:
                yield line
            while (new := await queue.get()) is not None:
                yield new
        finally:
            self._followers.discard(queue)


# One log per registry model name, kept across restarts so that a crash's output stays readable.
_LOGS: dict[str, EngineLog] = {}


def engine_log(model: str) -> EngineLog:
    return _LOGS.setdefault(model, EngineLog())


def known_log(model: str) -> EngineLog | None:
    return _LOGS.get(model)
