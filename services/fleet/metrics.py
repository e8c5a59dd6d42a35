"""Prometheus series per fleet node, in the process that routes (the gateway, the scheduler)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import PREFIX, TTFT_BUCKETS

NODE_REQUESTS = Counter(
    f"{PREFIX}node_requests_total",
    "Requests routed to a fleet node, by outcome (ok, failed over, error).",
    ["node", "outcome"],
)
NODE_FAILOVERS = Counter(
    f"{PREFIX}node_failovers_total", "Requests moved off a node before their first token.", ["node"]
)
NODE_CIRCUIT = Gauge(f"{PREFIX}node_circuit_state", "A node's circuit: 0 closed, 1 half-open, 2 open.", ["node"])
NODE_IN_FLIGHT = Gauge(f"{PREFIX}node_requests_in_flight", "Requests this process has running on a node.", ["node"])
NODE_LATENCY = Histogram(
    f"{PREFIX}node_time_to_first_token_seconds",
    "From routing a request to a node until its first token (a whole reply for unary calls).",
    ["node"],
    buckets=TTFT_BUCKETS,
)
