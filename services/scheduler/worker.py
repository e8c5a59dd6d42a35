"""Workers: take jobs from JetStream, run them, and record the outcome in PostgreSQL.

Run them inside the scheduler process (the default), or as separate processes
that scale out: `python -m services.scheduler.worker`.

Per message: claim the job (compare-and-set, new lease), run it while a
heartbeat extends AckWait (`in_progress`) and the lease, then finish it under
that lease and ack. A worker that dies stops heartbeating; JetStream redelivers
after AckWait and the next worker's claim takes over the stale lease. Failures
are retried with backoff (`nak(delay)`) up to MaxDeliver, then the job fails with
a dead letter and the message is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.errors import MeshError
from services.scheduler.config import SchedulerSettings
from services.scheduler.domain import Job, JobState, JobType, Progress
from services.scheduler.handlers import JobHandlers, is_retryable, is_transient
from services.scheduler.metrics import LOOP_ERRORS
from services.scheduler.queue import JobQueue
from services.scheduler.store import JobStore

log = logging.getLogger(__name__)

HIGH_BAND_WAIT_SECONDS = 0.05


# Why a running job was stopped.
SHUTDOWN, CANCELLED, LEASE_LOST = "shutdown", "cancelled", "lease lost"


class Worker:
    def __init__(self, settings: SchedulerSettings, store: JobStore, queue: JobQueue, handlers: JobHandlers) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.handlers = handlers
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self._loops: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[object]] = {}
        self._stop_reasons: dict[str, str] = {}

    async def start(self) -> None:
        await self.queue.subscribe_cancels(self._cancel_locally)
        await self.queue.subscribe_max_deliveries(self._exhausted)
        for job_type in self.settings.worker_job_types:
            subscriptions = await self.queue.consumers(job_type)
            self._loops.append(asyncio.create_task(self._consume(job_type, subscriptions)))
        log.info("worker %s consuming %s", self.name, ", ".join(t.value for t in self.settings.worker_job_types))

    async def stop(self, grace: float) -> None:
        """Stop taking jobs; let running ones finish for `grace` seconds, then hand them back."""
        for loop in self._loops:
            loop.cancel()
        if self._loops:  # bounded: a fetch that loses its cancellation must not hold the shutdown
            await asyncio.wait(self._loops, timeout=grace)
        if self._handling:
            await asyncio.wait(self._handling, timeout=grace)
        for job_id, run in list(self._running.items()):
            self._stop_reasons[job_id] = SHUTDOWN
            run.cancel()
        await asyncio.gather(*self._handling, return_exceptions=True)

    # ---- consuming ----

    async def _consume(self, job_type: JobType, subscriptions: list[JetStreamContext.PullSubscription]) -> None:
        slots = asyncio.Semaphore(self.settings.worker_concurrency)
        high, normal = subscriptions
        while True:
            await slots.acquire()
            try:
                message = await self.queue.fetch_one(high, HIGH_BAND_WAIT_SECONDS) or await self.queue.fetch_one(
                    normal, self.settings.poll_seconds
                )
            except NatsError as error:  # reconnecting, or the consumers are gone with the stream
                LOOP_ERRORS.labels("fetch").inc()
                log.warning("fetching %s jobs: %s; subscribing again", job_type.value, error)
                message = None
                await asyncio.sleep(self.settings.poll_seconds)
                with contextlib.suppress(NatsError, TimeoutError):
                    await self.queue.ensure_stream()
                    high, normal = await self.queue.consumers(job_type)
            if message is None:
                slots.release()
                continue
            task = asyncio.create_task(self._handle(message))
            self._handling.add(task)
            task.add_done_callback(self._handling.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _handle(self, message: Msg) -> None:
        try:
            await self._process(message)
        except Exception:  # noqa: BLE001 - not acked: JetStream redelivers after AckWait
            log.exception("handling a job message failed; it will be redelivered")

    async def _process(self, message: Msg) -> None:
        job_id = message.data.decode()
        sequence, delivered = message.metadata.sequence.stream, message.metadata.num_delivered
        job = await self.store.get(job_id)
        if job is None:  # its submit was withdrawn after a failed publish
            log.info("message %d names no job (%s); dropping it", sequence, job_id)
            await message.term()
            return
        await self.store.expire_due(job_id)
        lease = uuid.uuid4()
        claimed = await self.store.claim(job_id, lease, sequence, self.settings.ack_wait_seconds * 2 / 3)
        if claimed is None:
            current = await self.store.get(job_id)
            if current is None or current.state.terminal:  # cancelled, expired or done: nothing to run
                await message.ack()
            else:  # another worker is alive on it (a redelivery overtook its heartbeat)
                await message.nak(delay=self.settings.ack_wait_seconds)
            return
        log.info("job %s (%s) attempt %d started on %s", job_id, claimed.job_type.value, claimed.attempt, self.name)
        with tracing.tracer().start_as_current_span(
            f"job {claimed.job_type.value}",
            context=tracing.extract(message.headers),
            kind=SpanKind.CONSUMER,
            attributes={"llmmesh.job_id": job_id, "llmmesh.attempt": claimed.attempt},
        ):
            await self._run(claimed, lease, message, sequence, delivered)

    async def _run(self, job: Job, lease: uuid.UUID, message: Msg, sequence: int, delivered: int) -> None:
        # JetStream hears from this worker on its own schedule, until the message is settled: a
        # slow PostgreSQL (a restart, a reconnect) must not let AckWait lapse and the job be
        # redelivered, and claimed again, while this attempt still runs or records its result.
        keeper = asyncio.create_task(self._keep_in_progress(message))
        try:
            await self._attempt(job, lease, message, sequence, delivered)
        finally:
            keeper.cancel()

    async def _keep_in_progress(self, message: Msg) -> None:
        interval = self.settings.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(NatsError):
                await message.in_progress()

    async def _attempt(self, job: Job, lease: uuid.UUID, message: Msg, sequence: int, delivered: int) -> None:
        job_id = job.job_id
        run = asyncio.create_task(
            self.handlers.run(
                job,
                self._reporter(job_id, lease),
                cancelled_by_user=lambda: self._stop_reasons.get(job_id) == CANCELLED,
            )
        )
        self._running[job_id] = run
        heartbeat = asyncio.create_task(self._heartbeat(job_id, lease, run))
        try:
            result = await run
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(job_id, SHUTDOWN)
            if reason == CANCELLED:
                await message.ack()
            elif reason == SHUTDOWN and await self.store.requeue(job_id, lease, "worker shut down; requeued"):
                await message.nak()
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return
        except Exception as error:  # noqa: BLE001 - every failure is recorded on the job
            await self._failed(job, lease, message, sequence, delivered, error)
            return
        finally:
            heartbeat.cancel()
            self._running.pop(job_id, None)
        if await self.store.succeed(job_id, lease, result):
            await message.ack()
            log.info("job %s succeeded", job_id)
            return
        current = await self.store.get(job_id)
        if current is None or current.state.terminal:
            await message.ack()  # cancelled just before it finished
        else:
            log.warning("job %s: attempt %d lost its lease; its result is discarded", job_id, job.attempt)

    async def _failed(
        self, job: Job, lease: uuid.UUID, message: Msg, sequence: int, delivered: int, error: Exception
    ) -> None:
        reason = error.message if isinstance(error, MeshError) else f"{type(error).__name__}: {error}"
        if is_transient(error):  # the service is down or busy: retry until the job's TTL, backing off
            delay = self.settings.retry_delay(job.attempt)
            if await self.store.requeue_later(job.job_id, lease, reason, delay):
                log.warning("job %s attempt %d: %s; retrying in %.1fs", job.job_id, job.attempt, reason, delay)
                await message.ack()  # this message is done: the retry is a new one
            return
        if is_retryable(error) and delivered < self.settings.max_deliver:
            delay = self.settings.retry_delay(delivered)
            if await self.store.requeue(job.job_id, lease, reason):
                log.warning("job %s attempt %d failed (%s); retrying in %.1fs", job.job_id, job.attempt, reason, delay)
                await message.nak(delay=delay)
            return
        if await self.store.fail(job.job_id, lease, reason, sequence, delivered):
            log.error("job %s failed for good after %d deliveries: %s", job.job_id, delivered, reason)
            await message.term()

    def _reporter(self, job_id: str, lease: uuid.UUID) -> Callable[[Progress], Awaitable[None]]:
        async def report(progress: Progress) -> None:
            await self.store.heartbeat(job_id, lease, progress)

        return report

    async def _heartbeat(self, job_id: str, lease: uuid.UUID, run: asyncio.Task[object]) -> None:
        """Extend the lease; stop the run when the job stopped being ours."""
        interval = self.settings.ack_wait_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.store.heartbeat(job_id, lease):
                    continue
                current = await self.store.get(job_id)
            except Exception as error:  # noqa: BLE001 - a PostgreSQL blip: the next beat tries again
                LOOP_ERRORS.labels("heartbeat").inc()
                log.warning("job %s: heartbeat failed (%s); retrying in %.1fs", job_id, error, interval)
                continue
            cancelled = current is not None and current.state.terminal
            self._stop_reasons[job_id] = CANCELLED if cancelled else LEASE_LOST
            run.cancel()
            return

    async def _cancel_locally(self, job_id: str) -> None:
        """A control message asks to stop `job_id`. Anyone who reaches NATS could send one, so it
        is obeyed only when PostgreSQL, the truth, says the job was cancelled."""
        task = self._running.get(job_id)
        if task is None:
            return
        job = await self.store.get(job_id)
        if job is None or job.state is not JobState.CANCELLED:
            log.warning("ignored a cancel message for job %s, which is not cancelled", job_id)
            return
        self._stop_reasons[job_id] = CANCELLED
        task.cancel()

    async def _exhausted(self, sequence: int, deliveries: int) -> None:
        """A message reached MaxDeliver without an ack or term: its worker died on the last try."""
        job_id = await self.queue.job_id_at(sequence)
        if job_id is None:
            return
        job = await self.store.get(job_id)
        if job is not None and not job.state.terminal and job.attempt < self.settings.max_deliver:
            # PostgreSQL counted fewer attempts than the advisory claims: not JetStream's (forged).
            log.warning("ignored a MaxDeliver advisory for job %s after %d attempts", job_id, job.attempt)
            return
        error = f"no worker finished the job in {deliveries} deliveries (each stopped responding)"
        if await self.store.fail(job_id, None, error, sequence, deliveries):
            log.error("job %s failed: %s", job_id, error)
        await self.queue.delete(sequence)


async def run_worker_process(settings: SchedulerSettings) -> None:
    """Main of a worker-only process: no gRPC server, just consumption until SIGTERM."""
    from services.common.grpc_server import wait_for_shutdown_signal
    from services.common.postgres import open_pool

    pool = await open_pool(settings.database_url)
    store = JobStore(pool)
    await store.migrate()
    queue = JobQueue(settings.nats_url, settings.queue_config, settings.nats_credentials())
    await queue.connect(name="llmmesh-worker")
    handlers = JobHandlers.from_settings(settings)
    worker = Worker(settings, store, queue, handlers)
    await worker.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await worker.stop(settings.shutdown_grace_seconds)
        await queue.close()
        await handlers.close()
        await pool.close()


if __name__ == "__main__":
    from services.common.logs import configure_logging

    worker_settings = SchedulerSettings()
    configure_logging(worker_settings.log_level, "scheduler-worker")
    asyncio.run(run_worker_process(worker_settings))
