"""Adapter training status and the stored adapters.

Training itself is submitted as a job (`POST /internal/queue/enqueue` with
job_type adapter_train): the job's id is its training id here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from services.common.errors import NotFound
from services.gateway.auth import Caller, scope, superuser
from services.gateway.dependencies import get_scheduler, get_trainer
from services.scheduler.client import JobType, SchedulerClient, job_json
from services.trainer.client import TrainerClient, as_json

router = APIRouter()


@router.get("/v1/training/status/{job_id}")
async def training_status(
    job_id: str,
    request: Request,
    scheduler: SchedulerClient = Depends(get_scheduler),
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    """Step, total steps, loss, eta and, once stored, the adapter. The job is looked up as
    /v1/jobs does (another owner's job is 404 here too), and a job that never reached the
    trainer, or that the trainer no longer holds, reports what its job record says."""
    try:
        job = await scheduler.get(job_id, caller.owner)
    except NotFound:
        if caller.kind != "superuser":
            raise
        return (await trainer.get(job_id)).to_json()  # a pipeline build's run has no job of its own
    if job.job_type is not JobType.ADAPTER_TRAIN:
        raise NotFound(f"Job '{job_id}' is not an adapter_train job.", param="job_id")
    summary = job_json(job)
    ended_as_job = {"training_id": job.job_id, "state": summary["state"], "error": summary["error"] or ""}
    try:
        training = (await trainer.get(job.job_id)).to_json()
    except NotFound:
        if job.result is not None and job.result.HasField("adapter_train"):
            return as_json(job.result.adapter_train)
        return ended_as_job
    if summary["state"] in ("cancelled", "failed", "expired") and training["state"] not in ("cancelled", "failed"):
        return {**training, **ended_as_job}  # the job is the truth; its run hears about it a moment later
    return training


@router.get("/v1/adapters")
async def list_adapters(
    request: Request,
    base_model: str = "",
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(scope("chat")),
) -> dict[str, Any]:
    """The caller's stored adapters and shared ones (the superuser: all), newest first: use an
    `id` as `adapter_settings.adapter_id`."""
    adapters = await trainer.list_adapters(base_model, caller.owner)
    return {"object": "list", "data": [_adapter_json(a, caller) for a in adapters]}


@router.delete("/v1/adapters/{adapter_id}")
async def delete_adapter(
    adapter_id: str,
    request: Request,
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    """The caller's own adapter (another tenant's, even a shared one, is a 404); the superuser's: any."""
    await trainer.delete_adapter(adapter_id, caller.owner)
    return {"id": adapter_id, "object": "adapter", "deleted": True}


@router.post("/v1/adapters/{adapter_id}/share")
async def share_adapter(
    adapter_id: str,
    request: Request,
    trainer: TrainerClient = Depends(get_trainer),
    caller: Caller = Depends(superuser),
) -> dict[str, Any]:
    """Publish an adapter to every tenant, on purpose. To withdraw it, delete it."""
    return _adapter_json(await trainer.share_adapter(adapter_id))


def _adapter_json(adapter: trainer_pb.Adapter, caller: Caller | None = None) -> dict[str, Any]:
    """An adapter as the caller may see it: the server's own file paths only for the superuser
    (`caller` None: the superuser's own route); object-store URIs for everyone."""
    body = {"id": adapter.adapter_id, "object": "adapter", **as_json(adapter)}
    if caller is not None and caller.kind != "superuser" and "locations" in body:
        body["locations"] = [place for place in body["locations"] if "://" in place]
    return body
