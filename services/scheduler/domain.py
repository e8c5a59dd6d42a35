"""Jobs: their types, states and records, and the one mapping to protobuf and JSON.

A job's typed request and result are kept as the protobuf messages of the
services that run them (inference ChatRequest, embeddings EmbedRequest), so the
scheduler never re-declares another service's contract.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.proto_enum import ProtoEnum
from services.common.rate_limits import RateLimits

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class JobType(ProtoEnum):
    __pb__ = pb.JobType

    CHAT = "chat"
    VISION = "vision"
    ADAPTER_TRAIN = "adapter_train"
    EMBED = "embed"
    BATCH = "batch"

    @classmethod
    def from_pb(cls, value: int) -> JobType:
        if (job_type := cls.parse_pb(value)) is None:
            raise InvalidArgument(
                f"'job_type' is required: one of {', '.join(t.value for t in cls)}.", param="job_type"
            )
        return job_type


class JobState(ProtoEnum):
    __pb__ = pb.JobState

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED})


class CallbackState(ProtoEnum):
    __pb__ = pb.CallbackState

    NONE = "none"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# Which JobRequest field each type must set.
REQUEST_FIELD = {
    JobType.CHAT: "chat",
    JobType.VISION: "chat",
    JobType.EMBED: "embed",
    JobType.ADAPTER_TRAIN: "adapter_train",
    JobType.BATCH: "batch",
}


@dataclass(frozen=True)
class Progress:
    percent: float = 0.0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    def to_pb(self) -> pb.JobProgress:
        return pb.JobProgress(percent=self.percent, message=self.message, metrics=self.metrics)

    def to_json(self) -> dict[str, Any]:
        return {"percent": self.percent, "message": self.message, "metrics": self.metrics}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Progress | None:
        return cls(**data) if data else None

    @classmethod
    def from_pb(cls, message: pb.JobProgress) -> Progress:
        return cls(percent=message.percent, message=message.message, metrics=dict(message.metrics))


ReportProgress = Callable[[Progress], Awaitable[None]]  # how a running job reports its progress


@dataclass(frozen=True)
class Submission:
    """A validated SubmitJob request."""

    job_id: str
    job_type: JobType
    request: pb.JobRequest
    callback_url: str
    ttl_seconds: int
    idempotency_key: str
    priority: int
    owner: str

    @classmethod
    def from_pb(cls, message: pb.SubmitJobRequest, default_ttl: int, max_ttl: int) -> Submission:
        job_type = JobType.from_pb(message.job_type)
        expected = REQUEST_FIELD[job_type]
        if message.request.WhichOneof("kind") != expected:
            raise InvalidArgument(f"A {job_type.value} job needs 'request.{expected}'.", param="request")
        if not 0 <= message.ttl_seconds <= max_ttl:
            raise InvalidArgument(f"'ttl_seconds' must be between 1 and {max_ttl}.", param="ttl_seconds")
        if len(message.idempotency_key) > 256:
            raise InvalidArgument("'idempotency_key' is longer than 256 characters.", param="idempotency_key")
        # PostgreSQL's text holds no NUL: refused here, for gRPC callers as for the gateway's.
        for name, value in (
            ("idempotency_key", message.idempotency_key),
            ("callback_url", message.callback_url),
            ("owner", message.owner),
            *((f"request.batch.metadata.{k[:32]}", k + v) for k, v in message.request.batch.metadata.items()),
        ):
            if "\x00" in value:
                raise InvalidArgument(f"'{name}' holds a NUL character (U+0000).", param=name)
        return cls(
            job_id=job_id_for(message.job_id, message.idempotency_key, message.owner),
            job_type=job_type,
            request=message.request,
            callback_url=message.callback_url.strip(),
            ttl_seconds=message.ttl_seconds or default_ttl,
            idempotency_key=message.idempotency_key,
            priority=message.priority,
            owner=message.owner,
        )


def job_id_for(job_id: str, idempotency_key: str, owner: str) -> str:
    """The caller's id; else one derived from the idempotency key (so a resubmission that
    only repeats the key finds the first job); else a random one. In the owner's namespace."""
    if job_id:
        if not JOB_ID_PATTERN.match(job_id):
            raise InvalidArgument(
                "'job_id' must be 1-128 characters of letters, digits and . _ : -, starting with a letter or digit.",
                param="job_id",
            )
        return namespaced(job_id, owner)
    if idempotency_key:
        return namespaced("job-" + hashlib.sha256(f"{owner}\0{idempotency_key}".encode()).hexdigest()[:32], owner)
    return namespaced(f"job-{uuid.uuid4().hex}", owner)


def namespaced(job_id: str, owner: str) -> str:
    """`job_id` within `owner`'s namespace: `<namespace>.<job_id>`, so that two tenants may
    choose the same id, and neither learns that the other did. The operator's ("") ids are
    as given. An id that already carries the owner's namespace is kept."""
    if not owner:
        return job_id
    prefix = hashlib.sha256(owner.encode()).hexdigest()[:8] + "."
    return job_id if job_id.startswith(prefix) else prefix + job_id


def rate_limits_pb(limits: RateLimits) -> pb.RateLimits:
    return pb.RateLimits(requests_per_minute=limits.requests_per_minute, tokens_per_minute=limits.tokens_per_minute)


def rate_limits_from_pb(message: pb.RateLimits) -> RateLimits:
    return RateLimits(
        message.requests_per_minute if message.HasField("requests_per_minute") else None,
        message.tokens_per_minute if message.HasField("tokens_per_minute") else None,
    )


@dataclass(frozen=True)
class Job:
    """One job record, as PostgreSQL holds it."""

    job_id: str
    job_type: JobType
    state: JobState
    request: pb.JobRequest
    result: pb.JobResult | None
    error: str
    progress: Progress | None
    attempt: int
    priority: int
    callback_url: str
    callback_state: CallbackState
    callback_attempts: int
    callback_error: str
    idempotency_key: str
    owner: str
    submission_id: uuid.UUID
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime
    trace_context: dict[str, str] = field(default_factory=dict)  # W3C headers of the submission
    model: str = ""  # what it runs on (see the .proto's Job.model); set in every view

    @property
    def message_id(self) -> str:
        """JetStream's Nats-Msg-Id: a republish of the same accepted submission is a duplicate,
        while a new submission after a rejected one (same job_id) is not, and neither is the
        publish of a job requeued after its attempt `attempt` failed."""
        return f"{self.job_id}:{self.idempotency_key}:{self.submission_id}:{self.attempt}"

    def to_pb(self) -> pb.Job:
        job = pb.Job(
            job_id=self.job_id,
            job_type=self.job_type.to_pb(),
            state=self.state.to_pb(),
            request=self.request if self.request.ByteSize() else None,  # None: a BASIC view
            error=self.error,
            attempt=self.attempt,
            priority=self.priority,
            callback_url=self.callback_url,
            callback_state=self.callback_state.to_pb(),
            callback_attempts=self.callback_attempts,
            callback_error=self.callback_error,
            idempotency_key=self.idempotency_key,
            owner=self.owner,
            create_time=_timestamp(self.created_at),
            start_time=_timestamp(self.started_at),
            end_time=_timestamp(self.ended_at),
            expire_time=_timestamp(self.expires_at),
            model=self.model,
        )
        if self.result is not None:
            job.result.CopyFrom(self.result)
        if self.progress is not None:
            job.progress.CopyFrom(self.progress.to_pb())
        return job

    @classmethod
    def from_pb(cls, message: pb.Job) -> Job:
        """A job as a client receives it: without the store's own submission id and trace."""
        return cls(
            job_id=message.job_id,
            job_type=JobType.from_pb(message.job_type),
            state=JobState.from_pb(message.state),
            request=message.request,
            result=message.result if message.HasField("result") else None,
            error=message.error,
            progress=Progress.from_pb(message.progress) if message.HasField("progress") else None,
            attempt=message.attempt,
            priority=message.priority,
            callback_url=message.callback_url,
            callback_state=CallbackState.from_pb(message.callback_state),
            callback_attempts=message.callback_attempts,
            callback_error=message.callback_error,
            model=message.model,
            idempotency_key=message.idempotency_key,
            owner=message.owner,
            submission_id=uuid.UUID(int=0),
            created_at=_datetime(message, "create_time") or datetime.fromtimestamp(0, UTC),
            started_at=_datetime(message, "start_time"),
            ended_at=_datetime(message, "end_time"),
            expires_at=_datetime(message, "expire_time") or datetime.fromtimestamp(0, UTC),
        )


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _datetime(message: pb.Job, name: str) -> datetime | None:
    if not message.HasField(name):  # type: ignore[arg-type]
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def job_model(job_type: JobType, requested: str) -> str:
    """Job.model: the model a request names (the store derives it from the request); a chat or
    vision job naming none runs on its slot."""
    if not requested and job_type in (JobType.CHAT, JobType.VISION):
        return "background"
    return requested


def message_to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def job_json(job: Job) -> dict[str, Any]:
    """The JSON face of a job: the gateway's /v1/jobs bodies and the callback POST body.

    Enum values are lower-case words ("succeeded"), times are Unix seconds, and the typed
    request and result keep their protobuf JSON form."""

    def seconds(value: datetime | None) -> int | None:
        return int(value.timestamp()) if value is not None else None

    kind = job.result.WhichOneof("kind") if job.result is not None else None
    return {
        "id": job.job_id,
        "object": "job",
        "job_type": job.job_type.value,
        "state": job.state.value,
        "attempt": job.attempt,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key or None,
        "callback_url": job.callback_url or None,
        "callback_state": job.callback_state.value,
        "callback_error": job.callback_error or None,
        "model": job.model or None,
        "created_at": seconds(job.created_at),
        "started_at": seconds(job.started_at),
        "ended_at": seconds(job.ended_at),
        "expires_at": seconds(job.expires_at),
        "progress": message_to_json(job.progress.to_pb()) if job.progress is not None else None,
        "result": message_to_json(getattr(job.result, kind)) if kind else None,
        "error": job.error or None,
    }
