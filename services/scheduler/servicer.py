"""The gRPC face of the scheduler."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.scheduler.engine import Scheduler

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SchedulerService"].full_name


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.SubmitJobResponse:
        job, deduplicated = await self.scheduler.submit(request)
        return pb.SubmitJobResponse(job=job.to_pb(), deduplicated=deduplicated)

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=(await self.scheduler.get(request.job_id, request.owner)).to_pb())

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        jobs, next_page_token = await self.scheduler.list_jobs(request)
        return pb.ListJobsResponse(jobs=[job.to_pb() for job in jobs], next_page_token=next_page_token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=(await self.scheduler.cancel(request.job_id, request.owner)).to_pb())

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for job in self.scheduler.watch(request.job_id, request.owner):
            yield pb.WatchJobResponse(job=job.to_pb())
