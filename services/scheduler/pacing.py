"""The work the scheduler runs for an API key, held to the key's rate limits as it runs.

Batch lines and jobs are admitted at the gateway's door (checked, not counted there); their
requests and tokens count here, when they run. Over a limit, the work waits for room rather
than failing: it was accepted, and the caller asked for it to finish."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.common.rate_limits import RateLimits, Windows

MAX_WAIT_SECONDS = 5.0  # look again at least this often (a cancel or a shutdown ends the wait)


class Pacer:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.windows = Windows(clock)
        self._sleep = sleep

    async def start(self, owner: str, limits: RateLimits) -> None:
        """Wait until `owner` has room for one more request, then count it."""
        if not limits:
            return
        while (over := self.windows.over(owner, limits)) is not None:
            await self._sleep(min(max(over[2], 0.05), MAX_WAIT_SECONDS))
        self.windows.count_request(owner)

    def used(self, owner: str, limits: RateLimits, tokens: int) -> None:
        if limits:
            self.windows.add_tokens(owner, tokens)
