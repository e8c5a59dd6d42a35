"""The scheduler's typed client: errors as MeshErrors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.grpc_client import ServiceClient, rpc_errors, server_stream
from services.scheduler.domain import (
    JobState,
    JobType,
    job_json,
)

# The client speaks its service's domain types: callers import them from here.
__all__ = ["JobState", "JobType", "SchedulerClient", "job_json"]


class SchedulerClient(ServiceClient):
    """Jobs, always on behalf of one owner: another owner's job is NOT_FOUND."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        super().__init__(channel, timeout)
        self._stub = pb_grpc.SchedulerServiceStub(channel)

    async def submit(self, request: pb.SubmitJobRequest) -> pb.SubmitJobResponse:
        with rpc_errors():
            return await self._stub.SubmitJob(request, timeout=self._timeout)

    async def get(self, job_id: str, owner: str) -> pb.Job:
        with rpc_errors():
            response = await self._stub.GetJob(pb.GetJobRequest(job_id=job_id, owner=owner), timeout=self._timeout)
        return response.job

    async def list(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        with rpc_errors():
            return await self._stub.ListJobs(request, timeout=self._timeout)

    async def cancel(self, job_id: str, owner: str) -> pb.Job:
        with rpc_errors():
            response = await self._stub.CancelJob(
                pb.CancelJobRequest(job_id=job_id, owner=owner), timeout=self._timeout
            )
        return response.job

    async def watch(self, job_id: str, owner: str) -> AsyncIterator[pb.Job]:
        """The job's updates until it ends. Errors before the first update raise here."""
        call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, owner=owner))
        return await server_stream(call, lambda response: response.job)
