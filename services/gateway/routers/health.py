"""GET /health: the gateway and every upstream service."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_inference, get_settings
from services.gateway.upstream import InferenceClient

router = APIRouter()


@router.get("/health")
async def health(
    settings: GatewaySettings = Depends(get_settings),
    inference: InferenceClient = Depends(get_inference),
) -> JSONResponse:
    services = {"gateway": "SERVING", "inference": await inference.health(settings.health_timeout_seconds)}
    healthy = all(status == "SERVING" for status in services.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "services": services},
        status_code=200 if healthy else 503,
    )
