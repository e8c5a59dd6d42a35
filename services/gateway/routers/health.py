"""GET /health: the gateway and every upstream service.

Inference is required: without it the gateway answers 503 "unavailable". Another
upstream (embeddings, scheduler) or, under `make run`, the embedded NATS or PostgreSQL
being down is 503 "degraded", naming what is down. A load balancer's readiness probe
uses /health/ready instead, so that embeddings being down does not take chat down.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.errors import MeshError
from services.embeddings.client import EmbeddingsClient
from services.gateway.analytics import MetricsHistory
from services.gateway.auth import Caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_embeddings, get_home_inference, get_scheduler, get_settings
from services.gateway.request_context import RequestStats
from services.inference.client import InferenceClient
from services.scheduler.client import SchedulerClient

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics of this process: the gateway's series (and, in tests, every in-process service's)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health(
    request: Request,
    settings: GatewaySettings = Depends(get_settings),
    inference: InferenceClient = Depends(get_home_inference),
    embeddings: EmbeddingsClient = Depends(get_embeddings),
    scheduler: SchedulerClient = Depends(get_scheduler),
) -> JSONResponse:
    if request.app.state.drain.draining:  # SIGTERM: load balancers should stop sending now
        return JSONResponse({"status": "draining", "services": {"gateway": "NOT_SERVING"}}, status_code=503)
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
    supervised = await _supervisor_status(settings.supervisor_status_file)
    for name, state in supervised.items():  # under `make run`: a crashed service is being restarted
        if name in services and state.get("state") in ("restarting", "starting") and services[name] != "SERVING":
            services[name] = "RESTARTING"
    # Under `make run`, the embedded NATS and PostgreSQL, as the launcher last saw them.
    dependencies = {
        name: {
            "state": "SERVING" if state.get("state") == "running" else str(state.get("state", "unknown")).upper(),
            "restarts": state.get("restarts", 0),
            "last_exit": state.get("last_exit", ""),
        }
        for name, state in supervised.items()
        if state.get("kind") == "dependency"
    }
    down = [name for name, value in services.items() if value != "SERVING"]
    down += [name for name, value in dependencies.items() if value["state"] != "SERVING"]
    if inference_status != "SERVING":
        status, code = "unavailable", 503
    elif down:  # truthful: something the mesh needs is away (readiness to serve chat: /health/ready)
        status, code = "degraded", 503
    else:
        status, code = "ok", 200
    body: dict[str, Any] = {"status": status, "services": services}
    if dependencies:
        body["dependencies"] = dependencies
    if down:
        body["down"] = down
    if restarts := {name: state["restarts"] for name, state in supervised.items() if state.get("restarts")}:
        body["restarts"] = restarts
    if inference_status == "SERVING":
        body.update(await _model_and_queue(inference))
    return JSONResponse(body, status_code=code)


@router.get("/health/ready")
async def ready(
    request: Request,
    settings: GatewaySettings = Depends(get_settings),
    inference: InferenceClient = Depends(get_home_inference),
) -> JSONResponse:
    """Readiness: whether this gateway can answer model requests now (not draining, inference
    serving). A load balancer's probe: embeddings or the job queue being away must not take
    chat out of rotation; /health says what is degraded."""
    if request.app.state.drain.draining:
        return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
    if await inference.health(settings.health_timeout_seconds) != "SERVING":
        return JSONResponse({"ready": False, "reason": "inference is not serving"}, status_code=503)
    return JSONResponse({"ready": True})


async def _model_and_queue(inference: InferenceClient) -> dict[str, Any]:
    """What llm-queue-proxy's health reports: the current (live) model and the queue."""
    try:
        live, (_, waiting, capacity) = await asyncio.gather(inference.get_model("live"), inference.queue())
    except MeshError:
        return {}
    return {"current_model": live.name, "queue": {"waiting": waiting, "capacity": capacity}}


@router.get("/metrics/summary")
async def metrics_summary(request: Request, inference: InferenceClient = Depends(get_home_inference)) -> dict[str, Any]:
    """llm-queue-proxy's JSON metrics: uptime, requests by outcome, concurrency, queue, current model."""
    stats: RequestStats = request.app.state.request_stats
    finished = stats.succeeded + stats.failed + stats.cancelled
    return {
        "uptime_seconds": round(time.time() - stats.started_at, 1),
        "requests": {
            "total": stats.total,
            "successful": stats.succeeded,
            "failed": stats.failed,
            "cancelled": stats.cancelled,
            "success_rate": round(stats.succeeded / finished, 4) if finished else None,
        },
        "active_workers": stats.active,
        "peak_concurrency": stats.peak_active,
        **await _model_and_queue(inference),
    }


@router.get("/metrics/history")
async def metrics_history(
    request: Request,
    seconds: float | None = Query(None, gt=0, le=86_400, description="How far back; unset: all kept."),
    caller: Caller = Depends(scope("admin")),
) -> dict[str, Any]:
    """The console's analytics: this gateway's model requests, errors, tokens and stream TTFT
    per interval (see services/gateway/analytics.py). The recent errors, which name request ids,
    are the caller's own unless it is the superuser."""
    history: MetricsHistory = request.app.state.history
    return history.snapshot(seconds, owner=None if caller.kind == "superuser" else caller.subject)


async def _supervisor_status(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}

    def read() -> dict[str, dict[str, Any]]:
        try:
            services: dict[str, dict[str, Any]] = json.loads(path.read_text())["services"]
            return services
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    return await asyncio.to_thread(read)
