"""The scheduler's typed client: domain jobs in and out, errors as MeshErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, rpc_errors, server_stream
from services.scheduler.domain import Job, JobState, JobType, job_json, rate_limits_pb

# The client speaks its service's domain types: callers import them from here. A job's
# request and result are the protobuf messages of the services that run them.
__all__ = ["Job", "JobState", "JobType", "SchedulerClient", "job_json", "rate_limits_pb"]


class SchedulerClient(ServiceClient):
    """Jobs, always on behalf of one owner: another owner's job is NOT_FOUND."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.SchedulerServiceStub(channel)

    async def submit(
        self,
        job_type: JobType,
        request: pb.JobRequest,
        *,
        owner: str,
        job_id: str = "",
        callback_url: str = "",
        ttl_seconds: int = 0,
        idempotency_key: str = "",
        priority: int = 0,
    ) -> tuple[Job, bool]:
        """The accepted job, and whether it is an earlier submission's (a duplicate)."""
        message = pb.SubmitJobRequest(
            job_id=job_id,
            job_type=job_type.to_pb(),
            request=request,
            callback_url=callback_url,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
            priority=priority,
            owner=owner,
        )
        with rpc_errors():
            response = await self._stub.SubmitJob(message, timeout=self._timeout)
        return Job.from_pb(response.job), response.deduplicated

    async def get(self, job_id: str, owner: str) -> Job:
        with rpc_errors():
            response = await self._stub.GetJob(pb.GetJobRequest(job_id=job_id, owner=owner), timeout=self._timeout)
        return Job.from_pb(response.job)

    async def list(
        self,
        owner: str,
        *,
        states: Sequence[JobState] = (),
        job_types: Sequence[JobType] = (),
        full: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Job], str]:
        """One page of the owner's jobs, newest first, and the next page's token ("" at the end).
        `full`: with each job's request and result."""
        message = pb.ListJobsRequest(
            view=pb.JOB_VIEW_FULL if full else pb.JOB_VIEW_BASIC,
            states=[state.to_pb() for state in states],
            job_types=[job_type.to_pb() for job_type in job_types],
            page_size=page_size,
            page_token=page_token,
            owner=owner,
        )
        with rpc_errors():
            response = await self._stub.ListJobs(message, timeout=self._timeout)
        return [Job.from_pb(job) for job in response.jobs], response.next_page_token

    async def cancel(self, job_id: str, owner: str) -> Job:
        with rpc_errors():
            response = await self._stub.CancelJob(
                pb.CancelJobRequest(job_id=job_id, owner=owner), timeout=self._timeout
            )
        return Job.from_pb(response.job)

    async def watch(self, job_id: str, owner: str) -> AsyncIterator[Job]:
        """The job's updates until it ends. Errors before the first update raise here."""
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, owner=owner))
        return await server_stream(call, lambda response: Job.from_pb(response.job))
