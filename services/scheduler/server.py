"""Assembles the scheduler: job store, JetStream queue, workers, callbacks, gRPC server."""

from __future__ import annotations

import asyncio

import asyncpg

from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.config import strong_secret
from services.common.errors import FailedPrecondition
from services.common.grpc_server import GrpcService, start_grpc_server
from services.common.postgres import open_pool
from services.scheduler.callbacks import CallbackDispatcher, CallbackGuard
from services.scheduler.config import SchedulerSettings
from services.scheduler.engine import JobChanges, Scheduler
from services.scheduler.handlers import JobHandlers
from services.scheduler.queue import JobQueue
from services.scheduler.servicer import SERVICE_NAME, SchedulerServicer
from services.scheduler.store import JobStore
from services.scheduler.worker import Worker


class SchedulerServer(GrpcService[SchedulerSettings]):
    def __init__(self, settings: SchedulerSettings) -> None:
        if not settings.database_url or not settings.nats_url:
            raise FailedPrecondition("The scheduler needs PostgreSQL and NATS: set DATABASE_URL and NATS_URL.")
        self.settings = settings
        self.worker: Worker | None = None
        self._pool: asyncpg.Pool | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.serve_metrics()
        settings = self.settings
        callback_secret = strong_secret("LLMMESH_SCHEDULER_CALLBACK_SECRET", settings.callback_secret)
        nats_credentials = settings.nats_credentials()
        self._pool = await open_pool(settings.database_url)
        store = JobStore(self._pool)
        await store.migrate()
        self.queue = JobQueue(settings.nats_url, settings.queue_config, nats_credentials)
        await self.queue.connect(name="llmmesh-scheduler")
        self.handlers = JobHandlers.from_settings(settings)
        self.changes = JobChanges()
        await self.changes.listen(settings.database_url)
        guard = CallbackGuard(settings.callback_allowed_networks)
        self.callbacks = CallbackDispatcher(
            store,
            guard,
            callback_secret.encode(),
            timeout_seconds=settings.callback_timeout_seconds,
            max_attempts=settings.callback_max_attempts,
            backoff_seconds=settings.callback_backoff_seconds,
            max_backoff_seconds=settings.retry_backoff_max_seconds,
        )
        self.scheduler = Scheduler(settings, store, self.queue, self.handlers, self.changes, self.callbacks, guard)
        if settings.run_workers:
            await self.start_worker()
        self._housekeeping = asyncio.create_task(self.scheduler.housekeep_forever())
        servicer = SchedulerServicer(self.scheduler)
        self._grpc = await start_grpc_server(
            host=settings.host,
            port=settings.port,
            register=lambda server: pb_grpc.add_SchedulerServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            internal_token=self.settings.required_internal_token(),
            max_message_bytes=self.settings.max_message_bytes,
        )

    async def start_worker(self) -> Worker:
        """Consume jobs in this process (done at start unless `run_workers` is off)."""
        self.worker = Worker(self.settings, self.scheduler.store, self.queue, self.handlers)
        await self.worker.start()
        return self.worker

    async def release(self) -> None:
        if self.worker is not None:
            await self.worker.stop(self.settings.shutdown_grace_seconds)
        if self._housekeeping is not None:
            self.scheduler.stop_housekeeping()
            self._housekeeping.cancel()
            await asyncio.wait({self._housekeeping}, timeout=5)
        await self.queue.close()
        await self.callbacks.close()
        await self.changes.close()
        await self.handlers.close()
        if self._pool is not None:
            await self._pool.close()
