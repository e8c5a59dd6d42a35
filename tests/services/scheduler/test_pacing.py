"""The scheduler holds the work it runs for a key to the key's limits, on a clock the test moves."""

from __future__ import annotations

from services.common.rate_limits import RateLimits
from services.scheduler.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_requests_over_the_minute_wait_for_room() -> None:
    clock = Clock()
    pacer = Pacer(clock, clock.sleep)
    limits = RateLimits(requests_per_minute=2)
    await pacer.start("key:a", limits)
    await pacer.start("key:a", limits)
    assert clock.slept == []
    await pacer.start("key:a", limits)  # the third waits until the first leaves the window
    assert clock.now >= 1060.0 and clock.slept
    await pacer.start("key:b", limits)  # another key has its own window
    assert pacer.windows["key:b"].requests


async def test_tokens_used_hold_back_the_next_request() -> None:
    clock = Clock()
    pacer = Pacer(clock, clock.sleep)
    limits = RateLimits(tokens_per_minute=100)
    await pacer.start("key:a", limits)
    pacer.used("key:a", limits, 150)
    clock.now += 10
    await pacer.start("key:a", limits)
    assert clock.now >= 1060.0  # the tokens of the first left the window first


async def test_no_limits_never_wait_and_count_nothing() -> None:
    clock = Clock()
    pacer = Pacer(clock, clock.sleep)
    for _ in range(100):
        await pacer.start("anonymous", RateLimits())
        pacer.used("anonymous", RateLimits(), 10_000)
    assert clock.slept == [] and not pacer.windows["anonymous"].requests
