"""The scheduler's domain: submit, read, cancel and watch jobs, and the housekeeping
that keeps the queue honest (TTL expiry, republishing, callbacks)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
from nats.errors import Error as NatsError

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable, quote
from services.scheduler.callbacks import CallbackDispatcher, CallbackGuard
from services.scheduler.config import SchedulerSettings
from services.scheduler.domain import Job, JobState, JobType, Submission, namespaced
from services.scheduler.handlers import JobHandlers
from services.scheduler.metrics import LOOP_ERRORS
from services.scheduler.queue import JobQueue
from services.scheduler.store import NOTIFY_CHANNEL, JobStore

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 200
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a page stops growing past this (it holds one job at least)
DEFAULT_PAGE_SIZE = 50


class JobChanges:
    """Fans PostgreSQL NOTIFYs on job changes out to watchers in this process."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.any_change = asyncio.Event()
        self.connections = 0  # LISTEN connections opened so far: more than one means it healed
        self._connection: asyncpg.Connection | None = None
        self._listening: asyncio.Task[None] | None = None

    async def listen(self, database_url: str) -> None:
        """LISTEN now, and again whenever the connection is lost (a PostgreSQL restart)."""
        await self._connect(database_url)
        self._listening = asyncio.create_task(self._listen_forever(database_url))

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()

    async def _connect(self, database_url: str) -> None:
        lost = asyncio.Event()
        connection = await asyncpg.connect(database_url)
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(NOTIFY_CHANNEL, self._notified)
        self._connection, self._lost = connection, lost
        self.connections += 1

    async def _listen_forever(self, database_url: str) -> None:
        backoff = 0.5
        while True:
            await self._lost.wait()
            log.warning("the LISTEN connection to PostgreSQL was lost; reconnecting")
            self._wake_all()  # what changed meanwhile went unnoticed: every watcher looks again
            while True:
                try:
                    await self._connect(database_url)
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    LOOP_ERRORS.labels("listen").inc()
                    log.warning("LISTEN: %s; retrying in %.1fs", error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            backoff = 0.5
            log.info("listening to job changes again")
            self._wake_all()

    def _wake_all(self) -> None:
        self.any_change.set()
        for events in self._watchers.values():
            for event in events:
                event.set()

    def _notified(self, _connection: object, _pid: int, _channel: str, job_id: str) -> None:
        self.any_change.set()
        for event in self._watchers.get(job_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, job_id: str):  # type: ignore[no-untyped-def]
        event = asyncio.Event()
        self._watchers[job_id].add(event)
        try:
            yield event
        finally:
            self._watchers[job_id].discard(event)
            if not self._watchers[job_id]:
                del self._watchers[job_id]


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        store: JobStore,
        queue: JobQueue,
        handlers: JobHandlers,
        changes: JobChanges,
        callbacks: CallbackDispatcher,
        guard: CallbackGuard,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.handlers = handlers
        self.changes = changes
        self.callbacks = callbacks
        self.guard = guard
        self._housekeeping = True

    # ---- client API ----

    async def submit(self, request: pb.SubmitJobRequest) -> tuple[Job, bool]:
        """The accepted job and whether it was a duplicate. Unavailable when it could not be queued."""
        submission = Submission.from_pb(request, self.settings.default_ttl_seconds, self.settings.max_ttl_seconds)
        if submission.callback_url:
            await self.guard.check(submission.callback_url)
        await self.handlers.check(submission)
        job, created = await self.store.insert(submission)
        if not created:
            if job.idempotency_key != submission.idempotency_key or (job.owner and job.owner != submission.owner):
                raise AlreadyExists(
                    f"A different job with id '{job.job_id}' exists; choose another job_id.", param="job_id"
                )
            return job, True
        try:
            sequence = await self.queue.publish(job)
        except Unavailable:
            if await self.store.withdraw(job):
                raise
            return job, False  # a worker got it after all: the publish landed, only its ack was lost
        await self.store.mark_published(job.job_id, sequence)
        return job, False

    async def get(self, job_id: str, owner: str) -> Job:
        """The job, if `owner` ("": anyone's) owns it; a tenant may name it without its namespace.
        An id no job can have (a NUL, which PostgreSQL's text cannot hold; longer than any id) is
        not found without asking the store."""
        possible = "\x00" not in job_id and len(job_id) <= MAX_JOB_ID_CHARS
        job = await self.store.get(namespaced(job_id, owner)) if possible else None
        if job is None or (owner and job.owner != owner):
            raise NotFound(f"No job '{quote(job_id)}'.", param="job_id", reason="JOB_NOT_FOUND")
        return job

    async def list_jobs(self, request: pb.ListJobsRequest) -> tuple[list[Job], str]:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"'page_size' must be between 1 and {MAX_PAGE_SIZE}.", param="page_size")
        jobs = await self.store.list_jobs(
            states=[JobState.from_pb(s) for s in request.states if s != pb.JOB_STATE_UNSPECIFIED],
            job_types=[JobType.from_pb(t) for t in request.job_types],
            owner=request.owner,
            limit=size + 1,
            after=_decode_page_token(request.page_token) if request.page_token else None,
            payloads=request.view == pb.JOB_VIEW_FULL,
        )
        # A page is bounded in bytes too: ten jobs of 10 MB would pass gRPC's message limit.
        taken, page_bytes = 0, 0
        while taken < min(size, len(jobs)) and (taken == 0 or page_bytes <= MAX_PAGE_BYTES):
            page_bytes += jobs[taken].to_pb().ByteSize()
            taken += 1
        next_token = _page_token(jobs[taken - 1]) if len(jobs) > taken else ""
        return jobs[:taken], next_token

    async def cancel(self, job_id: str, owner: str) -> Job:
        job = await self.get(job_id, owner)
        job_id = job.job_id
        if job.state.terminal:
            return job
        cancelled = await self.store.cancel(job_id)
        if cancelled is None:  # it ended meanwhile
            return await self.get(job_id, owner)
        if job.state is JobState.RUNNING:
            await self.queue.publish_cancel(job_id)
        log.info("job %s cancelled (was %s)", job_id, job.state.value)
        return cancelled

    async def watch(self, job_id: str, owner: str) -> AsyncIterator[Job]:
        """The job now, then each change, until it is terminal."""
        job_id = namespaced(job_id, owner)
        with self.changes.watch(job_id) as changed:
            job = await self.get(job_id, owner)
            yield job
            seen = job
            while not job.state.terminal:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_seconds):  # poll: a NOTIFY may be lost
                        await changed.wait()
                changed.clear()
                job = await self.get(job_id, owner)
                if (job.state, job.attempt, job.progress, job.error) != (
                    seen.state,
                    seen.attempt,
                    seen.progress,
                    seen.error,
                ):
                    yield job
                    seen = job

    # ---- housekeeping ----

    async def housekeep_forever(self) -> None:
        """Expire queued jobs past their TTL, republish jobs whose submitter crashed before its
        publish confirmed, and deliver due callbacks. Job changes wake it for callbacks (a job
        that just ended); the sweeps run once per poll interval, not on every change."""
        loop, last_sweep = asyncio.get_running_loop(), float("-inf")
        self.callbacks.on_delivered = self.changes.any_change.set
        while self._housekeeping:
            try:
                if loop.time() - last_sweep >= self.settings.poll_seconds:
                    last_sweep = loop.time()
                    await self._sweep()
                while await self.callbacks.deliver_due():
                    pass
            except (asyncpg.PostgresError, OSError, Unavailable) as error:  # the database is away
                log.warning("housekeeping: %s", error)
            except Exception:  # noqa: BLE001 - one bad round must not end housekeeping for good
                LOOP_ERRORS.labels("housekeeping").inc()
                log.exception("housekeeping round failed; the next one runs as usual")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_seconds):
                    await self.changes.any_change.wait()
            self.changes.any_change.clear()

    def stop_housekeeping(self) -> None:
        """End housekeep_forever after its round, even where a cancellation would be lost (a
        round's own deadline expiring as the cancel arrives): it must never outlive the pool."""
        self._housekeeping = False
        self.changes.any_change.set()

    async def _sweep(self) -> None:
        for job_id in await self.store.expire_due():
            log.info("job %s expired in the queue", job_id)
        if forgotten := await self.store.delete_ended(self.settings.retention_seconds):
            log.info("forgot %d jobs that ended over %d s ago", forgotten, self.settings.retention_seconds)
        await self._recover_lost_messages()
        for job in await self.store.unpublished(older_than_seconds=self.settings.publish_timeout_seconds * 2):
            with contextlib.suppress(Unavailable):
                await self.store.mark_published(job.job_id, await self.queue.publish(job))

    async def _recover_lost_messages(self) -> None:
        """PostgreSQL is the truth: a stream that vanished is created again, and a queued job
        whose message is not in it any more (NATS came back empty) is published again."""
        try:
            if await self.queue.ensure_stream():
                log.warning("the job stream was missing (did NATS lose its data?); created it again")
            queued = await self.store.queued_published(self.settings.publish_timeout_seconds * 2, limit=50)
            for job_id, sequence in queued:
                if not await self.queue.has_message(sequence) and await self.store.mark_unpublished(job_id):
                    log.warning("job %s: its message is gone from the stream; publishing it again", job_id)
        except (NatsError, TimeoutError) as error:  # NATS is away: the next sweep looks again
            log.warning("checking the job stream: %s", error)


MAX_PAGE_TOKEN_CHARS = 1024
MAX_JOB_ID_CHARS = 512  # a namespace and a 128-character id


def _page_token(job: Job) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at.isoformat(), job.job_id]).encode()).decode()


def _decode_page_token(token: str) -> tuple[datetime, str]:
    """The position a page token holds; a forged one (not base64 JSON of [time, id], nested
    deep, a NUL in the id) is INVALID_ARGUMENT, never an internal error."""
    forged = InvalidArgument("'page_token' is not one this service issued.", param="page_token")
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise forged
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, RecursionError, UnicodeError):
        raise forged from None
    if not (isinstance(decoded, list) and len(decoded) == 2 and all(isinstance(v, str) for v in decoded)):
        raise forged
    created_at, job_id = decoded
    if "\x00" in job_id or len(job_id) > 256:
        raise forged
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        raise forged from None
    if moment.tzinfo is None:
        raise forged
    return moment, job_id
