"""Job mapping: ids, submission checks, protobuf and JSON faces."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.scheduler.domain import (
    CallbackState,
    Job,
    JobState,
    JobType,
    Progress,
    Submission,
    job_id_for,
    job_json,
    namespaced,
)


def test_job_ids_come_from_the_caller_the_idempotency_key_or_chance() -> None:
    assert job_id_for("mine-1", "k", "") == "mine-1"  # the operator's ids are as given
    assert job_id_for("mine-1", "k", "owner").endswith(".mine-1")  # a tenant's are in its namespace
    assert job_id_for("mine-1", "k", "owner") != job_id_for("mine-1", "k", "other owner")
    assert namespaced(job_id_for("mine-1", "k", "owner"), "owner") == job_id_for("mine-1", "k", "owner")
    assert job_id_for("", "k", "owner") == job_id_for("", "k", "owner") != job_id_for("", "k", "other owner")
    assert job_id_for("", "", "owner") != job_id_for("", "", "owner")
    with pytest.raises(InvalidArgument):
        job_id_for("../etc", "", "")


def test_enums_round_trip() -> None:
    for job_type in JobType:
        assert JobType.from_pb(job_type.to_pb()) is job_type
    for state in JobState:
        assert JobState.from_pb(state.to_pb()) is state
    assert {s for s in JobState if s.terminal} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.EXPIRED,
    }


def test_a_submission_needs_the_request_of_its_type() -> None:
    chat = pb.JobRequest(chat=inference_pb.ChatRequest())
    ok = Submission.from_pb(pb.SubmitJobRequest(job_type=pb.JOB_TYPE_VISION, request=chat), 60, 600)
    assert ok.job_type is JobType.VISION and ok.ttl_seconds == 60
    with pytest.raises(InvalidArgument, match="request.embed"):
        Submission.from_pb(pb.SubmitJobRequest(job_type=pb.JOB_TYPE_EMBED, request=chat), 60, 600)
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        Submission.from_pb(pb.SubmitJobRequest(job_type=pb.JOB_TYPE_CHAT, request=chat, ttl_seconds=601), 60, 600)


def test_json_face_of_a_job() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    job = Job(
        job_id="j1",
        job_type=JobType.CHAT,
        state=JobState.RUNNING,
        request=pb.JobRequest(chat=inference_pb.ChatRequest(model="background")),
        result=None,
        error="",
        progress=Progress(percent=50, message="generating", metrics={"tokens": 16}),
        attempt=1,
        priority=2,
        callback_url="",
        callback_state=CallbackState.NONE,
        callback_attempts=0,
        callback_error="",
        idempotency_key="",
        owner="o",
        submission_id=uuid.uuid4(),
        created_at=now,
        started_at=now,
        ended_at=None,
        expires_at=now,
    )
    body = job_json(job)
    assert body["id"] == "j1" and body["state"] == "running" and body["job_type"] == "chat"
    assert body["progress"] == {"percent": 50.0, "message": "generating", "metrics": {"tokens": 16.0}}
    assert body["created_at"] == int(now.timestamp()) and body["ended_at"] is None
    assert body["result"] is None and body["callback_state"] == "none"
    # A client's job (from the wire) has the same JSON face, and the same protobuf.
    received = Job.from_pb(job.to_pb())
    assert job_json(received) == body and received.to_pb() == job.to_pb()
    done = replace(job, state=JobState.SUCCEEDED, ended_at=now, result=pb.JobResult(chat=inference_pb.ChatResponse()))
    assert Job.from_pb(done.to_pb()).to_pb() == done.to_pb()
