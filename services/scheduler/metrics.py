"""Scheduler metrics: jobs by type and state, how long they wait, and their callbacks."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import PREFIX, REQUEST_LATENCY_BUCKETS

JOBS = Counter(f"{PREFIX}jobs", "Jobs entering each state.", ("job_type", "state"))
JOB_QUEUE_WAIT = Histogram(
    f"{PREFIX}job_queue_wait_seconds",
    "From submission to the first attempt's start.",
    ("job_type",),
    buckets=REQUEST_LATENCY_BUCKETS,
)
CALLBACK_ATTEMPTS = Counter(f"{PREFIX}job_callback_attempts", "Callback POSTs, by outcome.", ("outcome",))
LOOP_ERRORS = Counter(
    f"{PREFIX}scheduler_loop_errors", "Rounds of a background loop that failed and were retried.", ("loop",)
)
