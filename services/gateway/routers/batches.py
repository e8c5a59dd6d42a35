"""/v1/batches: OpenAI's Batch API over the scheduler.

A batch is a scheduler job (type batch): durable in JetStream and PostgreSQL, resumed from
its checkpoint after a restart, cancelled like any job, and its owner's alone. Creating one
translates the input file's lines here (protocol/batches.py) and hands the scheduler the
prepared items; the output and error files are written from the results once the batch has
ended, the first time anyone looks at it, under ids derived from the batch's own.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query
from google.protobuf import json_format

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument, NotFound
from services.common.files import FileStore, derived_file_id
from services.common.rate_limits import RateLimits
from services.gateway.admission import DOORS, admit
from services.gateway.auth import Caller, get_caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_files, get_scheduler, get_settings
from services.gateway.protocol.batches import (
    BatchCreateIn,
    batch_body,
    check_input_lines,
    parse_results,
    prepare_items,
    progress_counts,
    render_results,
    settled,
)
from services.gateway.protocol.pages import openai_list
from services.scheduler.client import Job, JobType, SchedulerClient, rate_limits_pb

router = APIRouter()

BATCH_TTL_SECONDS = 24 * 3600  # the completion window


@router.post("/v1/batches")
async def create_batch(
    body: BatchCreateIn,
    settings: GatewaySettings = Depends(get_settings),
    files: FileStore = Depends(get_files),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    admit(caller, DOORS["batch"], body)
    record = await asyncio.to_thread(files.get, body.input_file_id, caller.owner)
    if record.purpose != "batch":
        raise InvalidArgument(f"File '{record.id}' was not uploaded with purpose 'batch'.", param="input_file_id")
    items, limits = await asyncio.to_thread(_prepare, files, record.id, body.endpoint, caller, settings)
    batch_id = f"batch_{uuid.uuid4().hex}"
    items_object, results_object = f"{batch_id}.items", f"{batch_id}.results"
    prepared = "".join(json_format.MessageToJson(item, indent=None) + "\n" for item in items).encode()
    await asyncio.to_thread(files.put_object, items_object, prepared)
    request = pb.BatchJobRequest(
        items_object=items_object,
        results_object=results_object,
        item_count=len(items),
        input_file_id=record.id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata or {},
    )
    job_request = pb.JobRequest(batch=request, rate_limits=rate_limits_pb(limits))
    job, _ = await scheduler.submit(
        JobType.BATCH, job_request, owner=caller.owner, job_id=batch_id, ttl_seconds=BATCH_TTL_SECONDS
    )
    return batch_body(job, None, None, (0, 0))


def _prepare(
    files: FileStore, file_id: str, endpoint: str, caller: Caller, settings: GatewaySettings
) -> tuple[list[pb.BatchItem], RateLimits]:
    """The input file's lines, parsed and admitted (off the event loop: 50,000 lines take seconds)."""
    data = files.content(file_id, caller.owner)
    lines = check_input_lines(data, settings.files.max_lines, settings.max_body_bytes)
    return prepare_items(lines, endpoint, caller, settings)


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(
    batch_id: str,
    files: FileStore = Depends(get_files),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    return await _view(await _batch_job(scheduler, batch_id, caller), files)


@router.get("/v1/batches")
async def list_batches(
    limit: int = Query(20, ge=1, le=100),
    after: str = Query(""),
    files: FileStore = Depends(get_files),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    try:
        jobs, next_token = await scheduler.list(
            caller.owner, job_types=[JobType.BATCH], full=True, page_size=limit, page_token=after
        )
    except InvalidArgument as error:  # a forged cursor: named as this API names it
        raise InvalidArgument(error.message.replace("'page_token'", "'after'"), param="after") from None
    data = [await _view(job, files) for job in jobs]
    # The scheduler pages by token: pass next_page_token as `after`.
    return {**openai_list(data, bool(next_token)), "next_page_token": next_token or None}


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(
    batch_id: str,
    files: FileStore = Depends(get_files),
    scheduler: SchedulerClient = Depends(get_scheduler),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    await _batch_job(scheduler, batch_id, caller)
    return await _view(await scheduler.cancel(batch_id, caller.owner), files)


async def _batch_job(scheduler: SchedulerClient, batch_id: str, caller: Caller) -> Job:
    job = await scheduler.get(batch_id, caller.owner)
    if job.job_type is not JobType.BATCH:
        raise NotFound(f"No batch '{batch_id}'.", param="batch_id")
    return job


async def _view(job: Job, files: FileStore) -> dict[str, Any]:
    """The batch object; once it has settled, with its output and error files (written now if new)."""
    if not settled(job):
        return batch_body(job, None, None, progress_counts(job))
    output_id, error_id, counts = await asyncio.to_thread(_written_files, job, files)
    return batch_body(job, output_id, error_id, counts)


def _written_files(job: Job, files: FileStore) -> tuple[str | None, str | None, tuple[int, int]]:
    """The batch's output and error file ids (None: no such lines), writing them the first time:
    their ids come from the batch's, so a second look finds them. The result parts are read only
    to write the files, or to count a batch that ended without a result (cancelled, failed)."""
    output_id, error_id = derived_file_id(f"{job.job_id}:output"), derived_file_id(f"{job.job_id}:error")
    results = None
    try:
        files.get(output_id, job.owner)
    except NotFound:
        results = parse_results(files.read_parts(job.request.batch.results_object))
        output, errors = render_results(job.job_id, results)
        files.put(job.owner, f"{job.job_id}_error.jsonl", "batch_output", errors, file_id=error_id)
        files.put(job.owner, f"{job.job_id}_output.jsonl", "batch_output", output, file_id=output_id)
    if job.result is not None and job.result.HasField("batch"):
        counts = progress_counts(job)  # the final counts, saved with the last part
    else:
        if results is None:
            results = parse_results(files.read_parts(job.request.batch.results_object))
        failed = sum(1 for r in results if r.WhichOneof("outcome") == "error")
        counts = (len(results) - failed, failed)
    return (output_id if counts[0] else None), (error_id if counts[1] else None), counts
