"""gRPC channels from one service to another.

Targets may name several replicas: `dns:///inference-headless:50051` (every address
the name resolves to, re-resolved as pods come and go) or
`ipv4:10.0.0.1:50051,10.0.0.2:50051`. Calls are spread over them round-robin,
client-side, since one HTTP/2 connection behind a Kubernetes Service would pin
every call to one pod.
"""

from __future__ import annotations

import json

import grpc

from services.common.auth import internal_token_interceptors
from services.common.grpc_server import MAX_MESSAGE_BYTES

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # A peer that vanished without closing its connection (a killed pod, a cut network) is found
    # by pings within seconds, not at the call's deadline.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A restarted service is dialled again within seconds; gRPC's default backoff grows to 120 s,
    # and calls fail fast (UNAVAILABLE, so 503 with Retry-After) until the channel reconnects.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 3_000),
]


def open_channel(target: str, internal_token: str | None) -> grpc.aio.Channel:
    """A channel that connects lazily, reconnects on its own, and sends the internal token."""
    interceptors = internal_token_interceptors(internal_token) if internal_token else []
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
