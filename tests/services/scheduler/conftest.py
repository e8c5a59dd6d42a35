"""Scheduler fixtures: a real nats-server and PostgreSQL, an inference service with mock
models for jobs, the real embeddings service, and an HTTP server that receives callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, StreamingResponse

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.embedded_nats import EmbeddedNats
from services.common.grpc_client import open_channel
from services.common.registry import ModelRegistry, ModelSpec
from services.embeddings.server import EmbeddingsServer
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import SchedulerServer
from tests.conftest import CALLBACK_SECRET, INTERNAL_TOKEN, serve_http

JOB_MODEL = "mock-jobs"


@pytest_asyncio.fixture(scope="session")
async def job_inference() -> AsyncIterator[InferenceServer]:
    """Inference whose background slot is a paced mock that fails on requests saying POISON."""
    registry = ModelRegistry.from_specs(
        [ModelSpec(name=JOB_MODEL, backend="mock", options={"token_delay_seconds": 0.01, "fail_on": "POISON"})],
        default_model=JOB_MODEL,
    )
    server = InferenceServer(InferenceSettings(port=0, database_url=None), registry=registry)
    await server.start()
    yield server
    await server.stop(grace=1)


@dataclass
class CallbackReceiver:
    url: str = ""
    received: dict[str, list[tuple[dict[str, str], bytes]]] = field(default_factory=lambda: defaultdict(list))
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    slow_ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, job_id: str, timeout: float = 30) -> tuple[dict[str, str], bytes]:
        async with asyncio.timeout(timeout), self.arrived:
            await self.arrived.wait_for(lambda: bool(self.received.get(job_id)))
        return self.received[job_id][0]


@pytest_asyncio.fixture(scope="session")
async def callbacks() -> AsyncIterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> dict[str, Any]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        async with receiver.arrived:
            receiver.received[headers["x-llmmesh-job-id"]].append((headers, await request.body()))
            receiver.arrived.notify_all()
        return {"ok": True}

    @app.post("/redirect")
    async def redirect() -> RedirectResponse:
        return RedirectResponse("/hook", status_code=307)

    @app.post("/slow")
    async def slow(request: Request) -> StreamingResponse:
        """A slow-loris receiver: it answers one byte at a time, never finishing in time."""
        receiver.slow_started.set()

        async def trickle() -> AsyncIterator[bytes]:
            try:
                for _ in range(600):
                    yield b" "
                    await asyncio.sleep(0.1)  # the pace of the trickle itself
            finally:
                receiver.slow_ended.set()

        return StreamingResponse(trickle(), media_type="application/json")

    server, task, url = await serve_http(app)
    receiver.url = url
    yield receiver
    server.should_exit = True
    await task


def scheduler_settings(
    nats_url: str, database_url: str, inference: InferenceServer, embeddings: EmbeddingsServer, **overrides: Any
) -> SchedulerSettings:
    """Fast timings for tests, and a stream of its own so that tests never share jobs."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "nats_url": nats_url,
        "database_url": database_url,
        "inference_target": f"127.0.0.1:{inference.port}",
        "embeddings_target": f"127.0.0.1:{embeddings.port}",
        "stream_name": f"TEST_{uuid.uuid4().hex[:10].upper()}",
        "ack_wait_seconds": 2.0,
        "max_deliver": 3,
        "retry_backoff_seconds": 0.05,
        "poll_seconds": 0.2,
        "publish_timeout_seconds": 2.0,
        "callback_secret": CALLBACK_SECRET,
        "callback_allowed_networks": ["127.0.0.1/32"],
        "callback_backoff_seconds": 0.05,
        "callback_max_attempts": 3,
        "shutdown_grace_seconds": 1.0,
        **overrides,
    }
    return SchedulerSettings(**values)


MakeScheduler = Callable[..., Awaitable[SchedulerServer]]


@pytest_asyncio.fixture
async def make_scheduler(
    nats_server: EmbeddedNats,
    fresh_database_url: str,
    job_inference: InferenceServer,
    embeddings: EmbeddingsServer,
) -> AsyncIterator[MakeScheduler]:
    servers: list[SchedulerServer] = []

    async def make(**overrides: Any) -> SchedulerServer:
        nats_url = overrides.pop("nats_url", nats_server.url)
        server = SchedulerServer(
            scheduler_settings(nats_url, fresh_database_url, job_inference, embeddings, **overrides)
        )
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop(grace=1)


@pytest_asyncio.fixture
async def scheduler(make_scheduler: MakeScheduler) -> SchedulerServer:
    return await make_scheduler()


@pytest_asyncio.fixture
async def jobs(scheduler: SchedulerServer) -> AsyncIterator[pb_grpc.SchedulerServiceStub]:
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        yield pb_grpc.SchedulerServiceStub(channel)


async def watch_until_done(stub: pb_grpc.SchedulerServiceStub, job_id: str, timeout: float = 60) -> list[pb.Job]:
    """Every job update WatchJob sends, through the terminal one."""
    updates = []
    async with asyncio.timeout(timeout):
        async for response in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
            updates.append(response.job)
    return updates


async def wait_for_callback(
    stub: pb_grpc.SchedulerServiceStub, scheduler: SchedulerServer, job_id: str, timeout: float = 30
) -> pb.Job:
    """The job once its callback is no longer pending (delivered or failed)."""
    async with asyncio.timeout(timeout):
        while True:
            scheduler.changes.any_change.clear()
            job = (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job
            if job.callback_state != pb.CALLBACK_STATE_PENDING:
                return job
            with contextlib.suppress(TimeoutError):  # woken by each attempt's update; polls in case
                async with asyncio.timeout(0.5):
                    await scheduler.changes.any_change.wait()
