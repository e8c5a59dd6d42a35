"""Requests and tokens per minute for one API key, counted over a sliding minute.

One declaration for every process that does work for a key: the gateway counts the requests
it answers, the scheduler the batch lines and jobs it runs (tokens counted when they run).
Each process keeps its own window (limits are per replica, as documented).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class RateLimits:
    """A key's limits; None: unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __bool__(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


@dataclass
class Window:
    """One key's recent requests and tokens, and its requests in flight."""

    requests: collections.deque[float] = field(default_factory=collections.deque)
    tokens: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    in_flight: int = 0

    def trim(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_SECONDS:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_SECONDS:
            self.tokens.popleft()

    def over(self, limits: RateLimits, now: float) -> tuple[str, int, float] | None:
        """(what, limit, seconds until there is room) when one more request is over a limit."""
        self.trim(now)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is not None and len(self.requests) >= rpm:
            return "requests per minute", rpm, (self.requests[0] + WINDOW_SECONDS - now if self.requests else 1.0)
        if tpm is not None and sum(t for _, t in self.tokens) >= tpm:
            return "tokens per minute", tpm, (self.tokens[0][0] + WINDOW_SECONDS - now if self.tokens else 1.0)
        return None


class Windows:
    """Every key's window in this process, by key id. Thread-safe: a batch's lines are admitted
    in a worker thread while the event loop admits requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._windows: dict[str, Window] = collections.defaultdict(Window)
        self._lock = threading.Lock()
        self.clock = clock

    def __getitem__(self, key_id: str) -> Window:
        with self._lock:
            return self._windows[key_id]

    def over(self, key_id: str, limits: RateLimits) -> tuple[str, int, float] | None:
        with self._lock:
            return self._windows[key_id].over(limits, self.clock())

    def count_request(self, key_id: str) -> None:
        with self._lock:
            self._windows[key_id].requests.append(self.clock())

    def add_tokens(self, key_id: str, tokens: int) -> None:
        if tokens:
            with self._lock:
                self._windows[key_id].tokens.append((self.clock(), tokens))


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))
