"""The mesh's processes for an operator (superuser): GET /admin/processes (each service's memory
and CPU) and GET /admin/logs/{service} (its recent log lines, then new ones, as SSE). Each service
answers through its ProcessService; the gateway answers for itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from services.common.errors import MeshError, NotFound
from services.common.grpc_client import ServiceClient
from services.common.logs import RECENT, RECENT_LINES
from services.common.process_service import DEFAULT_TAIL, process_stats
from services.gateway.auth import superuser
from services.gateway.sse import Payload, sse_response, with_heartbeats

router = APIRouter(dependencies=[Depends(superuser)])

STATS_TIMEOUT_SECONDS = 2.0
SERVICES = ("gateway", "inference", "embeddings", "scheduler", "trainer")


def _clients(request: Request) -> dict[str, ServiceClient]:
    state = request.app.state
    return {
        "inference": state.inference.home,
        "embeddings": state.embeddings,
        "scheduler": state.scheduler,
        "trainer": state.trainer,
    }


async def _stats(service: str, client: ServiceClient | None) -> dict[str, Any]:
    try:
        if client is None:
            stats = process_stats()
        else:
            stats = await client.process_stats(STATS_TIMEOUT_SECONDS)
    except MeshError as error:
        return {"service": service, "state": "unreachable", "error": error.message}
    return {"service": service, "state": "up", **dataclasses.asdict(stats)}


@router.get("/admin/processes")
async def list_processes(request: Request) -> dict[str, Any]:
    """Each service process's pid, resident memory, CPU seconds so far, uptime and threads; a
    service that does not answer within 2 s is `unreachable`."""
    clients = _clients(request)
    found = await asyncio.gather(*(_stats(name, clients.get(name)) for name in SERVICES))
    return {"object": "list", "data": list(found)}


@router.get("/admin/logs/{service}", response_model=None)
async def service_logs(
    service: str,
    request: Request,
    tail: int = Query(DEFAULT_TAIL, ge=0, le=RECENT_LINES, description="Recent lines sent first."),
) -> Any:
    """Server-sent events: a service's recent log lines ({"line": "<JSON object>"}), then each
    new one as it is logged, until the client disconnects."""
    if service not in SERVICES:
        raise NotFound(f"No service '{service[:64]}'; the services are {', '.join(SERVICES)}.", param="service")
    client = _clients(request).get(service)
    lines = RECENT.follow(tail) if client is None else await client.watch_logs(tail)

    async def events() -> AsyncGenerator[Payload, None]:
        async with contextlib.aclosing(lines):  # type: ignore[type-var]  # the watch ends with the stream
            async for line in lines:
                yield {"line": line}

    return sse_response(with_heartbeats(events()))
