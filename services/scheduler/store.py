"""PostgreSQL job records: the source of truth for every job's state.

Every state change is a compare-and-set. A worker claims a job by bumping
`attempt` and writing a fresh `lease`; it can only finish, requeue or fail the
job while that lease is still the job's lease. A stale worker (one whose job was
redelivered to another) therefore can never overwrite a newer attempt's result.

A trigger NOTIFYs `llmmesh_jobs` with the job id on every change, which feeds
WatchJob and wakes the callback dispatcher in whichever process listens.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from google.protobuf import json_format

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common import tracing
from services.common.postgres import RetryingPool, migrate
from services.scheduler.domain import (
    CallbackState,
    Job,
    JobState,
    JobType,
    Progress,
    Submission,
    job_model,
    message_to_json,
)
from services.scheduler.metrics import JOB_QUEUE_WAIT, JOBS

NOTIFY_CHANNEL = "llmmesh_jobs"

MIGRATIONS = [
    f"""
    CREATE TABLE jobs (
        job_id            text PRIMARY KEY,
        idempotency_key   text NOT NULL DEFAULT '',
        job_type          text NOT NULL,
        state             text NOT NULL,
        owner             text NOT NULL DEFAULT '',
        priority          integer NOT NULL DEFAULT 0,
        request           jsonb NOT NULL,
        result            jsonb,
        error             text NOT NULL DEFAULT '',
        progress          jsonb,
        attempt           integer NOT NULL DEFAULT 0,
        lease             uuid,
        heartbeat_at      timestamptz,
        submission_id     uuid NOT NULL,
        published         boolean NOT NULL DEFAULT false,
        stream_sequence   bigint,
        callback_url      text NOT NULL DEFAULT '',
        callback_state    text NOT NULL,
        callback_attempts integer NOT NULL DEFAULT 0,
        callback_next_at  timestamptz,
        callback_error    text NOT NULL DEFAULT '',
        created_at        timestamptz NOT NULL DEFAULT now(),
        started_at        timestamptz,
        ended_at          timestamptz,
        expires_at        timestamptz NOT NULL,
        -- a resubmission of the same (job_id, idempotency_key) finds the original, however late
        UNIQUE (job_id, idempotency_key)
    );
    CREATE INDEX jobs_by_time ON jobs (created_at DESC, job_id DESC);
    CREATE INDEX jobs_queued_by_expiry ON jobs (expires_at) WHERE state = 'queued';
    CREATE INDEX jobs_unpublished ON jobs (created_at) WHERE NOT published;
    CREATE INDEX jobs_callbacks_due ON jobs (callback_next_at) WHERE callback_state = 'pending';

    -- Jobs that failed for good, with the JetStream message that carried them.
    CREATE TABLE job_dead_letters (
        job_id          text PRIMARY KEY REFERENCES jobs ON DELETE CASCADE,
        stream_sequence bigint,
        deliveries      integer NOT NULL,
        error           text NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now()
    );

    CREATE FUNCTION llmmesh_notify_job_change() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.job_id);
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
        FOR EACH ROW EXECUTE FUNCTION llmmesh_notify_job_change();
    """,
    # The W3C trace context of the submission, so that the callback joins the job's trace.
    "ALTER TABLE jobs ADD COLUMN trace_context jsonb",
    # A job requeued after an outage waits for its backoff before it is published again.
    "ALTER TABLE jobs ADD COLUMN available_at timestamptz",
    # Retention: ended jobs are found by when they ended.
    "CREATE INDEX jobs_by_end ON jobs (ended_at) WHERE ended_at IS NOT NULL",
    # The model a request names, kept beside it so that lists without payloads can show it.
    "ALTER TABLE jobs ADD COLUMN model text NOT NULL GENERATED ALWAYS AS (coalesce(request->'chat'->>'model',"
    " request->'embed'->>'model', request->'adapter_train'->>'base_model', '')) STORED",
]

# Columns set whenever a job reaches a terminal state: its callback becomes due now.
_END = "ended_at = now(), lease = NULL, callback_next_at = CASE WHEN callback_state = 'pending' THEN now() END"


# Every column but the payloads (request and result), for lists in the BASIC view.
_BASIC_COLUMNS = (
    "job_id, idempotency_key, job_type, state, owner, priority, NULL::jsonb AS request, NULL::jsonb AS result, model,"
    " error, progress, attempt, submission_id, callback_url, callback_state, callback_attempts, callback_error,"
    " created_at, started_at, ended_at, expires_at, trace_context"
)


def _job(row: asyncpg.Record) -> Job:
    result = None
    if row["result"] is not None:
        result = json_format.ParseDict(json.loads(row["result"]), pb.JobResult())
    request = pb.JobRequest()
    if row["request"] is not None:
        json_format.ParseDict(json.loads(row["request"]), request)
    return Job(
        job_id=row["job_id"],
        job_type=JobType(row["job_type"]),
        state=JobState(row["state"]),
        request=request,
        result=result,
        error=row["error"],
        progress=Progress.from_json(json.loads(row["progress"]) if row["progress"] else None),
        attempt=row["attempt"],
        priority=row["priority"],
        callback_url=row["callback_url"],
        callback_state=CallbackState(row["callback_state"]),
        callback_attempts=row["callback_attempts"],
        callback_error=row["callback_error"],
        idempotency_key=row["idempotency_key"],
        owner=row["owner"],
        submission_id=row["submission_id"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        expires_at=row["expires_at"],
        trace_context=json.loads(row["trace_context"]) if row["trace_context"] else {},
        model=job_model(JobType(row["job_type"]), row["model"]),
    )


def _counted(job_type: str | None, state: str) -> bool:
    """Count a transition that happened (job_type is what the UPDATE returned, None if none did)."""
    if job_type is None:
        return False
    JOBS.labels(job_type, state).inc()
    return True


class JobStore:
    def __init__(self, pool: RetryingPool) -> None:
        self.pool: Any = pool  # open_pool's: a statement on a connection PostgreSQL dropped is sent again

    async def migrate(self) -> None:
        await migrate(self.pool, "scheduler", MIGRATIONS)

    # ---- submission ----

    async def insert(self, submission: Submission) -> tuple[Job, bool]:
        """The stored job and whether this call created it (False: it existed already)."""
        row = await self.pool.fetchrow(
            "INSERT INTO jobs (job_id, idempotency_key, job_type, state, owner, priority, request,"
            " submission_id, callback_url, callback_state, expires_at, trace_context)"
            " VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10), $11)"
            " ON CONFLICT (job_id) DO NOTHING RETURNING *",
            submission.job_id,
            submission.idempotency_key,
            submission.job_type.value,
            submission.owner,
            submission.priority,
            json.dumps(message_to_json(submission.request)),
            uuid.uuid4(),
            submission.callback_url,
            (CallbackState.PENDING if submission.callback_url else CallbackState.NONE).value,
            float(submission.ttl_seconds),
            json.dumps(tracing.inject()),
        )
        if row is not None:
            JOBS.labels(submission.job_type.value, "queued").inc()
            return _job(row), True
        existing = await self.get(submission.job_id)
        assert existing is not None, "a job is never deleted once published"
        return existing, False

    async def mark_published(self, job_id: str, stream_sequence: int) -> None:
        await self.pool.execute(
            "UPDATE jobs SET published = true, stream_sequence = $2 WHERE job_id = $1", job_id, stream_sequence
        )

    async def withdraw(self, job: Job) -> bool:
        """Delete a submission that could not be queued, unless a worker got it after all
        (its publish did land): True when the job is gone and the caller must be told so."""
        status = await self.pool.execute(
            "DELETE FROM jobs WHERE job_id = $1 AND submission_id = $2 AND state = 'queued' AND attempt = 0",
            job.job_id,
            job.submission_id,
        )
        return status == "DELETE 1"

    async def unpublished(self, older_than_seconds: float) -> list[Job]:
        """Accepted jobs whose publish never confirmed (the submitter crashed): to republish."""
        rows = await self.pool.fetch(
            "SELECT * FROM jobs WHERE NOT published AND state = 'queued'"
            " AND created_at < now() - make_interval(secs => $1)"
            " AND (available_at IS NULL OR available_at <= now()) ORDER BY created_at LIMIT 100",
            older_than_seconds,
        )
        return [_job(row) for row in rows]

    async def queued_published(self, older_than_seconds: float, limit: int) -> list[tuple[str, int]]:
        """(job_id, stream_sequence) of the oldest jobs waiting on a message: each must be in the stream."""
        rows = await self.pool.fetch(
            "SELECT job_id, stream_sequence FROM jobs WHERE published AND state = 'queued'"
            " AND stream_sequence IS NOT NULL AND created_at < now() - make_interval(secs => $1)"
            " ORDER BY created_at LIMIT $2",
            older_than_seconds,
            limit,
        )
        return [(row["job_id"], row["stream_sequence"]) for row in rows]

    async def delete_ended(self, older_than_seconds: float, limit: int = 500) -> int:
        """Forget jobs that ended longer ago than the retention (their callbacks settled)."""
        status = await self.pool.execute(
            "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs"
            " WHERE ended_at < now() - make_interval(secs => $1) AND callback_state <> 'pending' LIMIT $2)",
            older_than_seconds,
            limit,
        )
        return int(status.split()[-1])

    async def mark_unpublished(self, job_id: str) -> bool:
        """A queued job whose message is gone (NATS lost it): the housekeeper publishes it again."""
        status = await self.pool.execute(
            "UPDATE jobs SET published = false WHERE job_id = $1 AND state = 'queued' AND published", job_id
        )
        return status == "UPDATE 1"

    # ---- reads ----

    async def get(self, job_id: str) -> Job | None:
        row = await self.pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", job_id)
        return _job(row) if row else None

    async def list_jobs(
        self,
        *,
        states: Sequence[JobState],
        job_types: Sequence[JobType],
        owner: str,
        limit: int,
        after: tuple[Any, str] | None,
        payloads: bool = True,
    ) -> list[Job]:
        """Newest first; `after` is the (created_at, job_id) of the previous page's last job.
        Without `payloads`, requests and results are never read from disk."""
        columns = "*" if payloads else _BASIC_COLUMNS
        rows = await self.pool.fetch(
            f"SELECT {columns} FROM jobs WHERE (cardinality($1::text[]) = 0 OR state = ANY($1))"
            " AND (cardinality($2::text[]) = 0 OR job_type = ANY($2))"
            " AND ($3 = '' OR owner = $3)"
            " AND ($4::timestamptz IS NULL OR (created_at, job_id) < ($4, $5))"
            " ORDER BY created_at DESC, job_id DESC LIMIT $6",
            [s.value for s in states],
            [t.value for t in job_types],
            owner,
            after[0] if after else None,
            after[1] if after else "",
            limit,
        )
        return [_job(row) for row in rows]

    # ---- worker transitions (compare-and-set on the lease) ----

    async def claim(self, job_id: str, lease: uuid.UUID, stream_sequence: int, stale_seconds: float) -> Job | None:
        """Start an attempt: a queued job that has not expired, or a running one whose worker
        stopped heartbeating (it died; this is the redelivery)."""
        row = await self.pool.fetchrow(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease = $2, heartbeat_at = now(),"
            " started_at = now(), stream_sequence = $3"
            " WHERE job_id = $1 AND ((state = 'queued' AND expires_at > now())"
            "  OR (state = 'running' AND heartbeat_at < now() - make_interval(secs => $4)))"
            " RETURNING *",
            job_id,
            lease,
            stream_sequence,
            stale_seconds,
        )
        if row is None:
            return None
        job = _job(row)
        JOBS.labels(job.job_type.value, "running").inc()
        if job.attempt == 1 and job.started_at is not None:
            JOB_QUEUE_WAIT.labels(job.job_type.value).observe((job.started_at - job.created_at).total_seconds())
        return job

    async def heartbeat(self, job_id: str, lease: uuid.UUID, progress: Progress | None = None) -> bool:
        """Keep the attempt alive (and record progress); False when it is no longer ours
        (cancelled, or claimed by a newer attempt)."""
        status = await self.pool.execute(
            "UPDATE jobs SET heartbeat_at = now(), progress = coalesce($3::jsonb, progress)"
            " WHERE job_id = $1 AND lease = $2 AND state = 'running'",
            job_id,
            lease,
            json.dumps(progress.to_json()) if progress else None,
        )
        return status == "UPDATE 1"

    async def succeed(self, job_id: str, lease: uuid.UUID, result: pb.JobResult) -> bool:
        job_type = await self.pool.fetchval(
            f"UPDATE jobs SET state = 'succeeded', result = $3, error = '', {_END}"
            " WHERE job_id = $1 AND lease = $2 AND state = 'running' RETURNING job_type",
            job_id,
            lease,
            json.dumps(message_to_json(result)),
        )
        return _counted(job_type, "succeeded")

    async def requeue(self, job_id: str, lease: uuid.UUID, error: str) -> bool:
        """A failed attempt that will be retried."""
        job_type = await self.pool.fetchval(
            "UPDATE jobs SET state = 'queued', lease = NULL, error = $3"
            " WHERE job_id = $1 AND lease = $2 AND state = 'running' RETURNING job_type",
            job_id,
            lease,
            error,
        )
        return _counted(job_type, "queued")

    async def requeue_later(self, job_id: str, lease: uuid.UUID, error: str, delay_seconds: float) -> bool:
        """A failed attempt retried as a new message once `delay_seconds` passed: the housekeeper
        publishes it again (services/scheduler/engine.py), however many deliveries it took."""
        job_type = await self.pool.fetchval(
            "UPDATE jobs SET state = 'queued', lease = NULL, error = $3, published = false,"
            " available_at = now() + make_interval(secs => $4)"
            " WHERE job_id = $1 AND lease = $2 AND state = 'running' RETURNING job_type",
            job_id,
            lease,
            error,
            delay_seconds,
        )
        return _counted(job_type, "queued")

    async def fail(
        self, job_id: str, lease: uuid.UUID | None, error: str, stream_sequence: int | None, deliveries: int
    ) -> bool:
        """Fail for good and keep a dead letter. With lease None: whoever held it (the worker
        died on its last delivery and JetStream reported it)."""
        async with self.pool.acquire() as connection, connection.transaction():
            job_type = await connection.fetchval(
                f"UPDATE jobs SET state = 'failed', error = $3, {_END}"
                " WHERE job_id = $1 AND ($2::uuid IS NULL OR lease = $2) AND state IN ('queued', 'running')"
                " RETURNING job_type",
                job_id,
                lease,
                error,
            )
            if not _counted(job_type, "failed"):
                return False
            await connection.execute(
                "INSERT INTO job_dead_letters (job_id, stream_sequence, deliveries, error) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (job_id) DO UPDATE SET stream_sequence = $2, deliveries = $3, error = $4",
                job_id,
                stream_sequence,
                deliveries,
                error,
            )
            return True

    async def dead_letter(self, job_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM job_dead_letters WHERE job_id = $1", job_id)

    # ---- client transitions ----

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job; None when it had already ended (or never existed)."""
        row = await self.pool.fetchrow(
            f"UPDATE jobs SET state = 'cancelled', error = 'cancelled by request', {_END}"
            " WHERE job_id = $1 AND state IN ('queued', 'running') RETURNING *",
            job_id,
        )
        _counted(row["job_type"] if row else None, "cancelled")
        return _job(row) if row else None

    async def expire_due(self, job_id: str | None = None) -> list[str]:
        """Expire queued jobs whose TTL passed (one, or all of them)."""
        rows = await self.pool.fetch(
            f"UPDATE jobs SET state = 'expired', error = 'ttl_seconds passed while queued', {_END}"
            " WHERE state = 'queued' AND expires_at <= now() AND ($1::text IS NULL OR job_id = $1)"
            " RETURNING job_id, job_type",
            job_id,
        )
        for row in rows:
            _counted(row["job_type"], "expired")
        return [row["job_id"] for row in rows]

    # ---- callbacks (an outbox: due callbacks are claimed with SKIP LOCKED) ----

    async def claim_due_callbacks(self, limit: int, lease_seconds: float) -> list[Job]:
        """Due callbacks, pushed `lease_seconds` into the future so that no other dispatcher
        takes them while this one delivers."""
        rows = await self.pool.fetch(
            "UPDATE jobs SET callback_next_at = now() + make_interval(secs => $2) WHERE job_id IN ("
            " SELECT job_id FROM jobs WHERE callback_state = 'pending' AND callback_next_at <= now()"
            " ORDER BY callback_next_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING *",
            limit,
            lease_seconds,
        )
        return [_job(row) for row in rows]

    async def callback_delivered(self, job_id: str) -> None:
        await self.pool.execute(
            "UPDATE jobs SET callback_state = 'delivered', callback_attempts = callback_attempts + 1,"
            " callback_next_at = NULL, callback_error = '' WHERE job_id = $1",
            job_id,
        )

    async def callback_failed(self, job_id: str, error: str, retry_in_seconds: float | None) -> None:
        """One failed attempt: retry later, or give up when `retry_in_seconds` is None."""
        await self.pool.execute(
            "UPDATE jobs SET callback_attempts = callback_attempts + 1, callback_error = $2,"
            " callback_state = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
            " callback_next_at = now() + make_interval(secs => $3::float8) WHERE job_id = $1",
            job_id,
            error,
            retry_in_seconds,
        )
