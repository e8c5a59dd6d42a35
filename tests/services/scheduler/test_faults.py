"""Faults around jobs, with the real nats-server, PostgreSQL and HTTP receivers: a hostile or
slow callback receiver, a callback that fails in a way nobody planned for, a PostgreSQL blip
under a running job, an inference outage longer than the retries."""

from __future__ import annotations

import asyncio
import shutil
import socket

import asyncpg
import pytest

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.embedded_nats import EmbeddedNats
from services.common.grpc_client import open_channel
from services.inference.config import InferenceSettings
from services.inference.registry import ModelRegistry, ModelSpec
from services.inference.server import InferenceServer
from services.scheduler.store import NOTIFY_CHANNEL
from tests.conftest import INTERNAL_TOKEN
from tests.services.scheduler.conftest import (
    JOB_MODEL,
    CallbackReceiver,
    MakeScheduler,
    wait_for_callback,
    watch_until_done,
)
from tests.services.scheduler.test_server import chat_job


async def test_a_slow_loris_receiver_delays_no_other_callback(
    make_scheduler: MakeScheduler, callbacks: CallbackReceiver
) -> None:
    scheduler = await make_scheduler(callback_timeout_seconds=3.0)
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        callbacks.slow_started.clear()
        callbacks.slow_ended.clear()
        slow = (await stub.SubmitJob(chat_job("to the slow one", callback_url=f"{callbacks.url}/slow"))).job.job_id
        async with asyncio.timeout(30):
            await callbacks.slow_started.wait()
        fast = (await stub.SubmitJob(chat_job("to the quick one", callback_url=f"{callbacks.url}/hook"))).job.job_id
        await callbacks.wait_for(fast)
        # Event order, not timing: the quick callback arrived while the slow one was still trickling.
        assert not callbacks.slow_ended.is_set()
        job = await wait_for_callback(stub, scheduler, slow)
        assert job.callback_state == pb.CALLBACK_STATE_FAILED and job.callback_attempts == 3
        assert "no complete answer within 3 s" in job.callback_error, job.callback_error


async def test_a_callback_that_fails_unexpectedly_fails_alone(
    make_scheduler: MakeScheduler, callbacks: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = await make_scheduler()
    post = scheduler.callbacks._post

    async def broken_for_one(target, job_id, body):  # what an InvalidURL from deep inside httpx looked like
        if "poisoned" in target.url:
            raise RuntimeError("an error nobody planned for")
        return await post(target, job_id, body)

    monkeypatch.setattr(scheduler.callbacks, "_post", broken_for_one)
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        bad = (await stub.SubmitJob(chat_job("a", callback_url=f"{callbacks.url}/hook?poisoned=1"))).job.job_id
        job = await wait_for_callback(stub, scheduler, bad)
        assert job.callback_state == pb.CALLBACK_STATE_FAILED and "nobody planned" in job.callback_error
        good = (await stub.SubmitJob(chat_job("b", callback_url=f"{callbacks.url}/hook"))).job.job_id
        await callbacks.wait_for(good)  # housekeeping still runs


async def test_a_control_character_in_a_callback_url_is_a_400_at_submit(jobs: pb_grpc.SchedulerServiceStub) -> None:
    import grpc

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(chat_job(callback_url="http://93.184.216.34/x\x01y"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "control characters" in error.value.details()


async def test_an_inference_outage_longer_than_the_retries_is_retried_until_it_ends(
    make_scheduler: MakeScheduler,
) -> None:
    port = free_port()  # nothing listens here yet: inference is "down"
    scheduler = await make_scheduler(
        inference_target=f"127.0.0.1:{port}", max_deliver=2, retry_backoff_seconds=0.05, retry_backoff_max_seconds=0.2
    )
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        job_id = (await stub.SubmitJob(chat_job("through the outage"))).job.job_id
        async with asyncio.timeout(60):
            while (job := (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job).attempt <= 4:
                assert job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING), job
                await asyncio.sleep(0.05)  # polling the job's attempts
        # Twice MaxDeliver attempts later it still waits; now inference comes back.
        registry = ModelRegistry.from_specs([ModelSpec(name=JOB_MODEL, backend="mock")], default_model=JOB_MODEL)
        inference = InferenceServer(InferenceSettings(port=port, database_url=None), registry=registry)
        await inference.start()
        try:
            updates = await watch_until_done(stub, job_id)
        finally:
            await inference.stop(grace=1)
    assert updates[-1].state == pb.JOB_STATE_SUCCEEDED, updates[-1]
    assert updates[-1].result.chat.message.content[0].text.endswith("through the outage")


async def test_a_failed_heartbeat_does_not_stop_the_heartbeats(
    make_scheduler: MakeScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL blip under a running job: later beats go on, so AckWait is extended and the
    job is not redelivered to run a second time."""
    scheduler = await make_scheduler(ack_wait_seconds=1.0)
    store = scheduler.worker.store
    beat = store.heartbeat
    failures = 0

    async def blip(job_id, lease, progress=None):
        nonlocal failures
        if progress is None and failures < 2:  # the first two beats hit a PostgreSQL that is away
            failures += 1
            raise OSError("connection reset by peer")
        return await beat(job_id, lease, progress)

    monkeypatch.setattr(store, "heartbeat", blip)
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        words = " ".join(["word"] * 300)  # 0.01 s a word: several AckWaits long
        job_id = (await stub.SubmitJob(chat_job(words))).job.job_id
        updates = await watch_until_done(stub, job_id)
    assert failures == 2
    assert updates[-1].state == pb.JOB_STATE_SUCCEEDED and updates[-1].attempt == 1  # ran once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_postgresql_dropping_every_connection_mid_job_runs_it_once_and_heals(
    make_scheduler: MakeScheduler,
) -> None:
    """What a PostgreSQL restart does to the scheduler's connections: every one is cut (the pool's,
    and the LISTEN one) while a job runs. The job finishes once; LISTEN comes back."""
    scheduler = await make_scheduler(ack_wait_seconds=1.0)
    changes = scheduler.changes
    admin = await asyncpg.connect(scheduler.settings.database_url)
    try:
        async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            words = " ".join(["word"] * 300)  # 0.01 s a word: several heartbeats long
            job_id = (await stub.SubmitJob(chat_job(words))).job.job_id
            async with asyncio.timeout(30):
                while (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job.state != pb.JOB_STATE_RUNNING:
                    await asyncio.sleep(0.02)  # polling until it runs
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            assert cut >= 2  # the LISTEN connection and the pool's
            updates = await watch_until_done(stub, job_id)
        assert updates[-1].state == pb.JOB_STATE_SUCCEEDED and updates[-1].attempt == 1  # ran once
        async with asyncio.timeout(30):
            while changes.connections < 2:
                await asyncio.sleep(0.05)  # polling until LISTEN is back
        with changes.watch("listen-probe") as notified:
            await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}, 'listen-probe'")
            async with asyncio.timeout(10):
                await notified.wait()
    finally:
        await admin.close()


async def test_jobs_queued_when_nats_loses_its_data_are_published_again_from_postgresql(
    make_scheduler: MakeScheduler, tmp_path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats")
    url = nats.start()
    try:
        front = await make_scheduler(nats_url=url, run_workers=False)  # accepts jobs, runs none
        async with open_channel(f"127.0.0.1:{front.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            job_ids = [(await stub.SubmitJob(chat_job(f"job {i}"))).job.job_id for i in range(5)]
            # NATS comes back empty: its store is gone, the jobs' messages with it.
            nats.stop()
            shutil.rmtree(tmp_path / "nats" / "jetstream")
            nats.start()
            await make_scheduler(nats_url=url)  # a replica with workers: its start makes the stream again
            finished = [(await watch_until_done(stub, job_id))[-1] for job_id in job_ids]
    finally:
        nats.stop()
    assert all(job.state == pb.JOB_STATE_SUCCEEDED and job.attempt == 1 for job in finished), finished
