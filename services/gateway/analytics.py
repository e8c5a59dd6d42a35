"""A short in-memory history of what this gateway served, for the console's analytics: one
bucket per interval (10 s, the last hour by default) of model requests, errors, tokens and the
time to first byte of streams, plus the last few errors.

It counts only the model endpoints (chat, completions, messages, responses, embeddings,
rerank): the console's own polling would otherwise be most of the traffic. It lives in the
gateway process and starts empty at each start; Prometheus (`/metrics`) is for longer views.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

MODEL_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
)
# Enough for a percentile; past it a bucket keeps its first samples (bounded memory).
MAX_SAMPLES_PER_BUCKET = 1000


@dataclass
class _Bucket:
    index: int  # its start is index × interval (integers: no float drift between buckets)
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_byte_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RecentError:
    time: float
    method: str
    path: str
    status: int
    request_id: str
    owner: str = ""  # who made the request ("" when it never said who it was)


def outcome(status: int) -> Literal["succeeded", "failed", "cancelled"]:
    """What a response's status says of a request: 499 or 0 is the client leaving (0: before any
    response), not a failure."""
    if status in (0, 499):
        return "cancelled"
    return "succeeded" if status < 400 else "failed"


class MetricsHistory:
    def __init__(self, interval_seconds: float = 10.0, keep: int = 360, clock: Callable[[], float] = time.time) -> None:
        self.interval = interval_seconds
        self._clock = clock
        self._buckets: deque[_Bucket] = deque(maxlen=keep)
        self.recent_errors: deque[RecentError] = deque(maxlen=20)

    @staticmethod
    def counts(path: str) -> bool:
        return path.startswith(MODEL_PATHS)

    def request_ended(
        self,
        method: str,
        path: str,
        status: int,
        first_byte_seconds: float | None,
        request_id: str = "",
        owner: str = "",
    ) -> None:
        """One model request finished with `status` (0 or 499: the client left, not an error);
        `first_byte_seconds` for a stream: when its first event went out."""
        bucket = self._current()
        bucket.requests += 1
        if outcome(status) == "failed":
            bucket.errors += 1
            self.recent_errors.append(RecentError(self._clock(), method, path, status, request_id, owner))
        if first_byte_seconds is not None and len(bucket.first_byte_seconds) < MAX_SAMPLES_PER_BUCKET:
            bucket.first_byte_seconds.append(first_byte_seconds)

    def tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        bucket = self._current()
        bucket.prompt_tokens += prompt_tokens
        bucket.completion_tokens += completion_tokens

    def snapshot(self, seconds: float | None = None, owner: str | None = None) -> dict[str, Any]:
        """Every interval of the last `seconds` (all kept ones when None), oldest first; empty
        intervals are zeros, so a chart's time axis has no holes. `owner`: the recent errors of
        that caller only (None: everyone's, for the superuser)."""
        now = self._index(self._clock())
        if seconds is None:
            first = self._buckets[0].index if self._buckets else now
        else:
            first = now - max(1, int(seconds // self.interval)) + 1
        first = max(first, now - (self._buckets.maxlen or 1) + 1)
        kept = {bucket.index: bucket for bucket in self._buckets}
        return {
            "interval_seconds": self.interval,
            "points": [self._point(kept.get(index) or _Bucket(index)) for index in range(first, now + 1)],
            "recent_errors": [
                {name: value for name, value in vars(error).items() if name != "owner"}
                for error in reversed(self.recent_errors)
                if owner is None or error.owner == owner
            ],
        }

    def _point(self, bucket: _Bucket) -> dict[str, Any]:
        samples = sorted(bucket.first_byte_seconds)
        return {
            "time": bucket.index * self.interval,
            "requests_per_minute": round(bucket.requests * 60 / self.interval, 2),
            "errors": bucket.errors,
            "prompt_tokens": bucket.prompt_tokens,
            "completion_tokens": bucket.completion_tokens,
            "completion_tokens_per_second": round(bucket.completion_tokens / self.interval, 2),
            "ttft_p50_ms": _percentile_ms(samples, 0.50),
            "ttft_p95_ms": _percentile_ms(samples, 0.95),
        }

    def _index(self, moment: float) -> int:
        return int(moment // self.interval)

    def _current(self) -> _Bucket:
        index = self._index(self._clock())
        if not self._buckets or self._buckets[-1].index != index:
            self._buckets.append(_Bucket(index))
        return self._buckets[-1]


def _percentile_ms(sorted_samples: list[float], fraction: float) -> float | None:
    if not sorted_samples:
        return None
    index = min(len(sorted_samples) - 1, int(fraction * len(sorted_samples)))
    return round(sorted_samples[index] * 1000, 2)
