"""GET /health: the gateway and every upstream service.

Inference is required: without it the gateway answers 503. Another upstream
(embeddings, scheduler)
being down leaves the gateway up ("degraded"), so that a readiness probe does
not take chat down with embeddings.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_embeddings, get_inference, get_scheduler, get_settings
from services.gateway.upstream import EmbeddingsClient, InferenceClient, SchedulerClient

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of this process: the gateway's series (and, in tests, every in-process service's)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health(
    settings: GatewaySettings = Depends(get_settings),
    inference: InferenceClient = Depends(get_inference),
    embeddings: EmbeddingsClient = Depends(get_embeddings),
    scheduler: SchedulerClient = Depends(get_scheduler),
) -> JSONResponse:
    timeout = settings.health_timeout_seconds
    inference_status, embeddings_status, scheduler_status = await asyncio.gather(
        inference.health(timeout), embeddings.health(timeout), scheduler.health(timeout)
    )
    services = {
        "gateway": "SERVING",
        "inference": inference_status,
        "embeddings": embeddings_status,
        "scheduler": scheduler_status,
    }
    if inference_status != "SERVING":
        status, code = "unavailable", 503
    elif any(value != "SERVING" for value in services.values()):
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    return JSONResponse({"status": status, "services": services}, status_code=code)
