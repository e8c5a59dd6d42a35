"""Starting mesh services for a benchmark: each in its own process, as in a deployment."""

from __future__ import annotations

import os
import secrets

import grpc
import httpx

from services.common.grpc_client import open_channel

# One token per benchmark run, shared by the services it starts and its own gRPC clients.
INTERNAL_TOKEN = secrets.token_urlsafe(32)


def mesh_env(**settings: str) -> dict[str, str]:
    """The environment of a benchmarked service: quiet logs, local-development gateway
    (no API key on loopback), the run's internal token, plus `settings`."""
    return {
        **os.environ,
        "LLMMESH_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "LLMMESH_GATEWAY_ALLOW_ANONYMOUS": "true",
        "LLMMESH_INFERENCE_LOG_LEVEL": "warning",
        "LLMMESH_EMBEDDINGS_LOG_LEVEL": "warning",
        "LLMMESH_GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }


def channel(target: str) -> grpc.aio.Channel:
    return open_channel(target, INTERNAL_TOKEN)


async def answers(http: httpx.AsyncClient, url: str) -> bool:
    """Whether `url` answers 200 now (a readiness probe for wait_ready)."""
    try:
        return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
