"""The gateway's short metrics history, on a clock the test moves."""

from __future__ import annotations

import pytest

from services.gateway.analytics import MAX_SAMPLES_PER_BUCKET, MetricsHistory, outcome


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "succeeded"), (302, "succeeded"), (400, "failed"), (503, "failed"), (499, "cancelled"), (0, "cancelled")],
)
def test_outcome_of_a_status(status: int, expected: str) -> None:
    """One reading of a status for the summary's counts and the history's errors alike."""
    assert outcome(status) == expected


def test_buckets_per_interval_with_zeros_between() -> None:
    clock = Clock()
    history = MetricsHistory(interval_seconds=10, keep=6, clock=clock)
    history.request_ended("POST", "/v1/chat/completions", 200, 0.05)
    history.request_ended("POST", "/v1/chat/completions", 200, 0.15)
    history.tokens(10, 40)
    clock.now += 25  # two intervals later
    history.request_ended("POST", "/v1/embeddings", 503, None, "req-1")

    points = history.snapshot()["points"]
    assert [p["time"] for p in points] == [1_000_000.0, 1_000_010.0, 1_000_020.0]
    first, empty, last = points
    assert first["requests_per_minute"] == 12.0 and first["completion_tokens_per_second"] == 4.0
    assert (first["ttft_p50_ms"], first["ttft_p95_ms"]) == (150.0, 150.0)
    assert empty == {**empty, "requests_per_minute": 0.0, "errors": 0, "ttft_p50_ms": None}
    assert last["errors"] == 1 and last["ttft_p50_ms"] is None
    assert history.snapshot()["recent_errors"][0] | {"time": 0} == {
        "time": 0, "method": "POST", "path": "/v1/embeddings", "status": 503, "request_id": "req-1"
    }  # fmt: skip


def test_a_window_and_the_bounds() -> None:
    clock = Clock()
    history = MetricsHistory(interval_seconds=10, keep=3, clock=clock)
    for _ in range(MAX_SAMPLES_PER_BUCKET + 50):
        history.request_ended("POST", "/v1/completions", 200, 0.01)
    clock.now += 100
    history.request_ended("POST", "/v1/completions", 499, None)  # the client left: not an error
    assert len(history.snapshot()["points"]) == 3  # never more than it keeps
    assert len(history.snapshot(seconds=20)["points"]) == 2
    assert history.snapshot(seconds=86_400)["points"][-1]["errors"] == 0
    assert len(history._buckets[0].first_byte_seconds) <= MAX_SAMPLES_PER_BUCKET


def test_only_model_endpoints_count() -> None:
    assert MetricsHistory.counts("/v1/chat/completions") and MetricsHistory.counts("/v2/rerank")
    assert not MetricsHistory.counts("/v1/models") and not MetricsHistory.counts("/console/app.js")
