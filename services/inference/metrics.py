"""Generation metrics with vLLM's names and semantics, for every backend alike.

Per request: queue time (waiting for the model: a swap, a load, or the single-model
queue), prefill time (scheduled until the first token), decode time (first to last
token), time to first token and end-to-end latency (from arrival), the gaps between
tokens, the token counts, and how it finished (stop, length, abort, error).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import (
    FAST_BUCKETS,
    PREFIX,
    REQUEST_LATENCY_BUCKETS,
    TOKEN_LATENCY_BUCKETS,
    TTFT_BUCKETS,
)
from services.inference.api import Chunk, FinishReason

log = logging.getLogger(__name__)

LABELS = ("model_name", "backend", "slot", "tier", "adapter")

TIME_TO_FIRST_TOKEN = Histogram(
    f"{PREFIX}time_to_first_token_seconds", "Time to first token.", LABELS, buckets=TTFT_BUCKETS
)
INTER_TOKEN_LATENCY = Histogram(
    f"{PREFIX}inter_token_latency_seconds", "Time between two output tokens.", LABELS, buckets=TOKEN_LATENCY_BUCKETS
)
E2E_LATENCY = Histogram(
    f"{PREFIX}e2e_request_latency_seconds", "End-to-end request latency.", LABELS, buckets=REQUEST_LATENCY_BUCKETS
)
QUEUE_TIME = Histogram(
    f"{PREFIX}request_queue_time_seconds",
    "Time waiting for the model (load, swap or queue).",
    LABELS,
    buckets=REQUEST_LATENCY_BUCKETS,
)
PREFILL_TIME = Histogram(
    f"{PREFIX}request_prefill_time_seconds", "Scheduled to first token.", LABELS, buckets=REQUEST_LATENCY_BUCKETS
)
DECODE_TIME = Histogram(
    f"{PREFIX}request_decode_time_seconds", "First to last token.", LABELS, buckets=REQUEST_LATENCY_BUCKETS
)
RUNNING = Gauge(f"{PREFIX}num_requests_running", "Requests generating now.", ("model_name", "backend"))
WAITING = Gauge(f"{PREFIX}num_requests_waiting", "Requests waiting for their model.", ("model_name", "backend"))
PROMPT_TOKENS = Counter(f"{PREFIX}prompt_tokens", "Prompt tokens processed.", LABELS)
GENERATION_TOKENS = Counter(f"{PREFIX}generation_tokens", "Tokens generated.", LABELS)
REQUEST_SUCCESS = Counter(
    f"{PREFIX}request_success", "Finished requests, by why they finished.", (*LABELS, "finished_reason")
)
PREFIX_CACHE_QUERIES = Counter(f"{PREFIX}prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", LABELS)
PREFIX_CACHE_HITS = Counter(f"{PREFIX}prefix_cache_hits", "Prompt tokens found in the prefix cache.", LABELS)
MODEL_LOAD_TIME = Histogram(
    f"{PREFIX}model_load_seconds", "Time to load a model (a swap includes it).", ("model_name", "backend"),
    buckets=FAST_BUCKETS,
)  # fmt: skip
MODELS_LOADED = Gauge(f"{PREFIX}models_loaded", "Models loaded now.")
ADAPTER_LOAD_TIME = Histogram(
    f"{PREFIX}adapter_load_seconds", "Time to attach a LoRA adapter.", ("model_name", "adapter"), buckets=FAST_BUCKETS
)
ADAPTER_LOOKUPS = Counter(
    f"{PREFIX}adapter_cache_lookups",
    "Requests naming an adapter: result=hit when it was already attached, miss otherwise.",
    ("model_name", "result"),
)

# finish reasons as vLLM names them; a tool call is a stop
_REASONS = {FinishReason.STOP: "stop", FinishReason.TOOL_CALLS: "stop", FinishReason.LENGTH: "length"}


@dataclass
class RequestTimer:
    """Follows one generation from arrival to its last chunk."""

    labels: dict[str, str]
    arrival: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    _finished: bool = False
    _inter_token: Any = None  # the labelled histogram, looked up once: it is observed per token

    def __post_init__(self) -> None:
        WAITING.labels(self.labels["model_name"], self.labels["backend"]).inc()
        self._inter_token = INTER_TOKEN_LATENCY.labels(**self.labels)

    def on_scheduled(self) -> None:
        self.scheduled = time.perf_counter()
        key = (self.labels["model_name"], self.labels["backend"])
        WAITING.labels(*key).dec()
        RUNNING.labels(*key).inc()
        QUEUE_TIME.labels(**self.labels).observe(self.scheduled - self.arrival)

    def on_chunk(self, chunk: Chunk) -> None:
        if chunk.text:
            now = time.perf_counter()
            if self.first_token is None:
                self.first_token = now
                TIME_TO_FIRST_TOKEN.labels(**self.labels).observe(now - self.arrival)
                PREFILL_TIME.labels(**self.labels).observe(now - (self.scheduled or self.arrival))
            elif self.last_token is not None:
                # A chunk that carries several tokens (a slow reader) counts each, spread evenly.
                gap = (now - self.last_token) / max(chunk.tokens, 1)
                for _ in range(max(chunk.tokens, 1)):
                    self._inter_token.observe(gap)
            self.last_token = now
        if chunk.finish_reason is not None:
            if chunk.usage is not None:
                PROMPT_TOKENS.labels(**self.labels).inc(chunk.usage.prompt_tokens)
                GENERATION_TOKENS.labels(**self.labels).inc(chunk.usage.completion_tokens)
                PREFIX_CACHE_QUERIES.labels(**self.labels).inc(chunk.usage.prompt_tokens)
                PREFIX_CACHE_HITS.labels(**self.labels).inc(chunk.usage.cached_prompt_tokens)
            self.finish(_REASONS.get(chunk.finish_reason, "stop"))

    def finish(self, reason: str) -> None:
        """Record the end once: stop or length from the last chunk, abort or error otherwise."""
        if self._finished:
            return
        self._finished = True
        now = time.perf_counter()
        key = (self.labels["model_name"], self.labels["backend"])
        if self.scheduled is None:
            WAITING.labels(*key).dec()
        else:
            RUNNING.labels(*key).dec()
        REQUEST_SUCCESS.labels(**self.labels, finished_reason=reason).inc()
        E2E_LATENCY.labels(**self.labels).observe(now - self.arrival)
        log.info(
            "generation %s",
            reason,
            extra={
                "model": self.labels["model_name"],
                "duration_ms": round((now - self.arrival) * 1000, 2),
                "ttft_ms": round((self.first_token - self.arrival) * 1000, 2) if self.first_token else None,
            },
        )
        if self.first_token is not None and self.last_token is not None:
            DECODE_TIME.labels(**self.labels).observe(self.last_token - self.first_token)
