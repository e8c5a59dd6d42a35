"""Trainer metrics: runs by outcome (cached ones too) and seconds per optimizer step."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import PREFIX

TRAINING_RUNS = Counter(
    f"{PREFIX}training_runs", "Training jobs by outcome (cached: the adapter existed).", ("base_model", "result")
)
TRAINING_STEP_SECONDS = Histogram(
    f"{PREFIX}training_step_seconds",
    "Mean seconds per optimizer step of each finished run.",
    ("base_model",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
