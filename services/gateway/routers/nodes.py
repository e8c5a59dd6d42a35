"""GET /v1/nodes: the fleet as this gateway routes over it (admin scope, as /v1/queue)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from services.fleet.client import FleetClient
from services.gateway.auth import scope
from services.gateway.dependencies import get_inference
from services.gateway.protocol.models import node_body

router = APIRouter()


@router.get("/v1/nodes", dependencies=[Depends(scope("admin"))])
async def list_nodes(inference: FleetClient = Depends(get_inference)) -> dict[str, Any]:
    """Each node's health, circuit, tier, models, requests in flight and recent errors."""
    return {"object": "list", "data": [node_body(node) for node in inference.nodes()]}
