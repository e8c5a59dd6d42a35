"""Prometheus metrics: shared names, vLLM's buckets, and the small HTTP port each gRPC
service exposes them on (the gateway serves them on its own /metrics).

Every series is prefixed `llmmesh:` and follows vLLM's semantics (vllm/v1/metrics/loggers.py),
so dashboards built for vLLM work with a changed prefix.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import start_http_server

log = logging.getLogger(__name__)

PREFIX = "llmmesh:"

# vLLM's buckets
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
# Sub-second work the mesh adds (gateway overhead, model swaps start here too).
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def serve_metrics(host: str, port: int | None) -> Any:
    """Serve the process's metrics on http://host:port/metrics; `port` 0 picks a free one,
    None turns it off. Returns the server (its `server_port` is the bound port), or None."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server
