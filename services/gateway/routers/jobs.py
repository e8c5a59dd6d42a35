"""Async jobs over HTTP: the design documents' enqueue endpoint, and /v1/jobs to read,
list, cancel and follow them (SSE).

A job belongs to the API key that submitted it; another key gets 404 for it, as if it
did not exist. A superuser sees every job.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from services.common.errors import InvalidArgument
from services.gateway.admission import DOORS, admit
from services.gateway.api_keys import Quotas
from services.gateway.auth import Caller, get_caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_scheduler, get_settings
from services.gateway.protocol.chat import ChatCompletionRequest
from services.gateway.protocol.common import INT32_MAX, OpenAIModel
from services.gateway.protocol.embeddings import EmbeddingsRequestIn
from services.gateway.protocol.training import TrainAdapterIn
from services.gateway.sse import Payload, sse_response, with_heartbeats
from services.scheduler.client import JobState, JobType, SchedulerClient, job_json, rate_limits_pb

router = APIRouter()


class EnqueueRequest(OpenAIModel):
    """The enqueue body of the design documents, plus `priority`."""

    job_id: str | None = Field(None, min_length=1, max_length=128)
    job_type: Literal["chat", "vision", "adapter_train", "embed"]
    request: dict[str, Any]
    callback_url: str | None = Field(None, max_length=2048)
    ttl_seconds: int | None = Field(None, ge=1, le=INT32_MAX)
    idempotency_key: str | None = Field(None, max_length=256)
    priority: int = Field(0, ge=-INT32_MAX, le=INT32_MAX)


def training_limits(quotas: Quotas) -> trainer_pb.TrainingLimits:
    """The key's training quotas as a run's limits; unset ones are the trainer's defaults."""
    return trainer_pb.TrainingLimits(
        max_examples=quotas.max_training_examples,
        max_epochs=quotas.max_training_epochs,
        max_steps=quotas.max_training_steps,
        max_run_seconds=quotas.max_training_seconds,
    )


JobBody = ChatCompletionRequest | EmbeddingsRequestIn | TrainAdapterIn


def _validated(job_type: JobType, body: dict[str, Any]) -> JobBody:
    """The job's request in the shape of the matching OpenAI endpoint, validated the same way."""
    try:
        if job_type in (JobType.CHAT, JobType.VISION):
            chat = ChatCompletionRequest.model_validate({"model": "background", **body})
            if chat.stream or chat.n != 1:
                raise InvalidArgument("Job requests take neither 'stream' nor 'n' > 1.", param="request")
            return chat
        if job_type is JobType.EMBED:
            return EmbeddingsRequestIn.model_validate(body)
        return TrainAdapterIn.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in ("request", *first["loc"]))
        raise InvalidArgument(f"{where}: {first['msg']}", param=where) from None


def _typed_request(validated: JobBody) -> pb.JobRequest:
    if isinstance(validated, ChatCompletionRequest):
        return pb.JobRequest(chat=validated.to_domain(max_choices=1)[0].to_pb())
    if isinstance(validated, EmbeddingsRequestIn):
        return pb.JobRequest(embed=validated.to_domain().to_pb())
    return pb.JobRequest(adapter_train=validated.to_pb())


@router.post("/internal/queue/enqueue", status_code=202)
async def enqueue(
    body: EnqueueRequest,
    request: Request,
    settings: GatewaySettings = Depends(get_settings),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(get_caller),
) -> Any:
    """202 with the new job; 200 with the original one when this submission is a duplicate."""
    job_type = JobType(body.job_type)
    validated = _validated(job_type, body.request)
    model = validated.base_model if isinstance(validated, TrainAdapterIn) else validated.model
    limits = admit(caller, DOORS[f"job:{job_type.value}"], body, [model])
    quotas = caller.key.quotas if caller.key is not None else Quotas()
    ceiling = settings.max_job_priority if quotas.max_priority is None else quotas.max_priority
    if body.priority > ceiling and caller.kind != "superuser":
        raise InvalidArgument(f"'priority' may be at most {ceiling}.", param="priority")
    typed_request = _typed_request(validated)
    typed_request.rate_limits.CopyFrom(rate_limits_pb(limits))
    if typed_request.HasField("adapter_train"):
        typed_request.adapter_train.limits.CopyFrom(training_limits(quotas))
    job, deduplicated = await scheduler.submit(
        job_type,
        typed_request,
        owner=caller.owner,
        job_id=body.job_id or "",
        callback_url=body.callback_url or "",
        ttl_seconds=body.ttl_seconds or 0,
        idempotency_key=body.idempotency_key or "",
        priority=body.priority,
    )
    return JSONResponse(job_json(job), status_code=200 if deduplicated else 202)


@router.get("/v1/jobs")
async def list_jobs(
    request: Request,
    state: list[Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]] = Query(default=[]),
    job_type: list[Literal["chat", "vision", "adapter_train", "embed", "batch"]] = Query(
        default=[], description="batch: the jobs behind /v1/batches."
    ),
    limit: int = Query(50, ge=1, le=200),
    page_token: str = "",
    view: Literal["basic", "full"] = Query("basic", description="full: with each job's request and result."),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    jobs, next_page_token = await scheduler.list(
        caller.owner,
        states=[JobState(s) for s in state],
        job_types=[JobType(t) for t in job_type],
        full=view == "full",
        page_size=limit,
        page_token=page_token,
    )
    return {
        "object": "list",
        "data": [job_json(job) for job in jobs],
        "has_more": bool(next_page_token),
        "next_page_token": next_page_token or None,
    }


@router.get("/v1/jobs/{job_id}")
async def get_job(
    job_id: str,
    request: Request,
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    return job_json(await scheduler.get(job_id, caller.owner))


@router.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: str,
    request: Request,
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    return job_json(await scheduler.cancel(job_id, caller.owner))


@router.get("/v1/jobs/{job_id}/events", response_model=None)
async def job_events(
    job_id: str,
    request: Request,
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> Any:
    """Server-sent events: the job now, each change, and `[DONE]` once it ended."""
    updates = await scheduler.watch(job_id, caller.owner)

    async def events() -> AsyncGenerator[Payload, None]:
        async for job in updates:
            yield job_json(job)

    return sse_response(with_heartbeats(events()))
