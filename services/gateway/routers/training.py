"""Adapter training status and the stored adapters.

Training itself is submitted as a job (`POST /internal/queue/enqueue` with
job_type adapter_train): the job's id is its training id here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from services.gateway.auth import Caller, scope, superuser
from services.gateway.dependencies import get_trainer
from services.gateway.upstream import TrainerClient
from services.trainer.domain import as_json

router = APIRouter()


@router.get("/v1/training/status/{job_id}")
async def training_status(
    job_id: str,
    request: Request,
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    """Step, total steps, loss, eta and, once stored, the adapter."""
    return as_json(await trainer.get(job_id))


@router.get("/v1/adapters")
async def list_adapters(
    request: Request,
    base_model: str = "",
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(scope("chat")),
) -> dict[str, Any]:
    """Stored adapters, newest first: use an `id` as `adapter_settings.adapter_id`."""
    adapters = await trainer.list_adapters(base_model)
    return {"object": "list", "data": [{"id": a.adapter_id, "object": "adapter", **as_json(a)} for a in adapters]}


@router.delete("/v1/adapters/{adapter_id}")
async def delete_adapter(
    adapter_id: str,
    request: Request,
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(superuser),
) -> dict[str, Any]:
    await trainer.delete_adapter(adapter_id)
    return {"id": adapter_id, "object": "adapter", "deleted": True}
