"""Faults around jobs, with the real nats-server, PostgreSQL and HTTP receivers: a hostile or
slow callback receiver, a callback that fails in a way nobody planned for, a PostgreSQL blip
under a running job, an inference outage longer than the retries."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import uuid

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.embedded_nats import EmbeddedNats
from services.common.grpc_client import open_channel
from services.common.registry import ModelRegistry, ModelSpec
from services.gateway.protocol.training import TrainAdapterIn
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from services.scheduler.store import NOTIFY_CHANNEL
from services.trainer.server import TrainerServer
from tests.conftest import GEMMA, INTERNAL_TOKEN, TRAINING_REQUEST
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
    # One long attempt: the quick job runs and calls back well within it, however loaded the machine.
    scheduler = await make_scheduler(callback_timeout_seconds=15.0, callback_max_attempts=1)
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
        assert job.callback_state == pb.CALLBACK_STATE_FAILED and job.callback_attempts == 1
        assert "no complete answer within 15 s" in job.callback_error, job.callback_error


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


async def test_a_scheduler_shutdown_during_training_is_not_a_cancel(
    make_scheduler: MakeScheduler, trainer: TrainerServer, inference: InferenceServer
) -> None:
    """SIGTERM lets go of the job without cancelling the run: the restarted scheduler's redelivery
    attaches to the same run, which finishes once."""
    request = {
        **TRAINING_REQUEST,
        "dataset": [{"instruction": f"Who keeps the keys {i}?", "output": "The lighthouse keeper."} for i in range(8)],
        "hyperparameters": {**TRAINING_REQUEST["hyperparameters"], "max_steps": 8},  # type: ignore[dict-item]
    }
    submission = pb.SubmitJobRequest(
        job_type=pb.JOB_TYPE_ADAPTER_TRAIN,
        ttl_seconds=600,
        request=pb.JobRequest(adapter_train=TrainAdapterIn.model_validate(request).to_pb()),  # the gateway's mapping
    )

    def runs(result: str) -> float:
        return REGISTRY.get_sample_value("llmmesh:training_runs_total", {"base_model": GEMMA, "result": result}) or 0

    cancelled, succeeded = runs("cancelled"), runs("succeeded")
    targets = {"trainer_target": f"127.0.0.1:{trainer.port}", "inference_target": f"127.0.0.1:{inference.port}"}
    first = await make_scheduler(**targets, ack_wait_seconds=3.0)
    async with open_channel(f"127.0.0.1:{first.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        job_id = (await stub.SubmitJob(submission)).job.job_id
        async with asyncio.timeout(120):
            while (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job.progress.message != "training":
                await asyncio.sleep(0.1)  # polling until the run reports its first step
    await first.stop(grace=0.5)  # what SIGTERM does
    second = await make_scheduler(**targets, ack_wait_seconds=3.0, stream_name=first.settings.stream_name)
    async with open_channel(f"127.0.0.1:{second.port}", INTERNAL_TOKEN) as channel:
        final = (await watch_until_done(pb_grpc.SchedulerServiceStub(channel), job_id, timeout=300))[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED, final
    assert runs("cancelled") == cancelled and runs("succeeded") == succeeded + 1  # one run, never cancelled


async def test_lists_leave_payloads_out_unless_asked_and_pages_are_bounded_in_bytes(
    make_scheduler: MakeScheduler,
) -> None:
    scheduler = await make_scheduler(run_workers=False)  # the jobs stay queued
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        big = "x" * (3 * 1024 * 1024)
        for _ in range(3):
            await stub.SubmitJob(chat_job(big))
        basic = await stub.ListJobs(pb.ListJobsRequest())
        assert len(basic.jobs) == 3 and not basic.next_page_token
        assert all(not job.HasField("request") for job in basic.jobs) and basic.ByteSize() < 10_000
        first = await stub.ListJobs(pb.ListJobsRequest(view=pb.JOB_VIEW_FULL))
        assert len(first.jobs) == 2 and first.next_page_token  # 6 MiB: past the 4 MiB a page may grow to
        assert first.jobs[0].request.chat.messages[0].content[0].text == big
        rest = await stub.ListJobs(pb.ListJobsRequest(view=pb.JOB_VIEW_FULL, page_token=first.next_page_token))
        assert len(rest.jobs) == 1 and not rest.next_page_token


async def test_ended_jobs_are_forgotten_after_the_retention(make_scheduler: MakeScheduler) -> None:
    scheduler = await make_scheduler(retention_seconds=60)
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        kept, old = [(await stub.SubmitJob(chat_job(text))).job.job_id for text in ("kept", "old")]
        for job_id in (kept, old):
            await watch_until_done(stub, job_id)
        # As if "old" had ended two minutes ago.
        await scheduler.scheduler.store.pool.execute(
            "UPDATE jobs SET ended_at = now() - interval '2 minutes' WHERE job_id = $1", old
        )
        async with asyncio.timeout(30):
            while await scheduler.scheduler.store.get(old) is not None:
                await asyncio.sleep(0.1)  # polling for the next housekeeping sweep
        assert (await stub.GetJob(pb.GetJobRequest(job_id=kept))).job.state == pb.JOB_STATE_SUCCEEDED


async def test_nats_killed_under_a_burst_of_200_loses_no_accepted_job_and_runs_none_twice(
    make_scheduler: MakeScheduler, callbacks: CallbackReceiver, tmp_path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats")
    url = nats.start()
    try:
        scheduler = await make_scheduler(nats_url=url, publish_timeout_seconds=1.0)
        async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            prefix = f"burst-{uuid.uuid4().hex[:8]}"

            async def submit(index: int) -> tuple[str, grpc.StatusCode]:
                request = chat_job(f"burst {index}", job_id=f"{prefix}-{index}", callback_url=f"{callbacks.url}/hook")
                try:
                    return (await stub.SubmitJob(request)).job.job_id, grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    return f"{prefix}-{index}", error.code()

            burst = [asyncio.create_task(submit(i)) for i in range(200)]
            async with asyncio.timeout(60):
                while sum(task.done() for task in burst) < 50:  # a quarter of the burst is in
                    await asyncio.sleep(0.01)
            nats.process.kill()  # SIGKILL: no goodbye to anyone
            await asyncio.to_thread(nats.process.wait)
            await asyncio.to_thread(nats.start)  # same port, same store
            outcomes = await asyncio.gather(*burst)
            assert {code for _, code in outcomes} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
            accepted = [job_id for job_id, code in outcomes if code == grpc.StatusCode.OK]
            refused = [job_id for job_id, code in outcomes if code != grpc.StatusCode.OK]
            finals = [(await watch_until_done(stub, job_id, timeout=120))[-1] for job_id in accepted]
            for job_id in accepted:
                await callbacks.wait_for(job_id, timeout=60)
            for job_id in refused:  # a 503 means not queued: no record, and it never runs
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.GetJob(pb.GetJobRequest(job_id=job_id))
                assert error.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        nats.stop()
    assert all(final.state == pb.JOB_STATE_SUCCEEDED for final in finals)
    deliveries = [len(callbacks.received[job_id]) for job_id in accepted]
    print(
        f"burst: submitted 200, accepted {len(accepted)}, refused {len(refused)}, succeeded"
        f" {len(finals)}, attempts>1 {sum(f.attempt > 1 for f in finals)}, callbacks per job {set(deliveries)}"
    )
    assert set(deliveries) == {1}  # each accepted job called back exactly once


async def test_forged_control_messages_are_ignored(make_scheduler: MakeScheduler) -> None:
    """Anyone who reaches NATS can publish on the control and advisory subjects: a cancel for a
    job that is not cancelled, and a MaxDeliver advisory for a job on its first attempt, change nothing."""
    scheduler = await make_scheduler()
    queue = scheduler.queue
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        words = " ".join(["word"] * 150)  # 0.01 s a word
        job_id = (await stub.SubmitJob(chat_job(words))).job.job_id
        async with asyncio.timeout(30):
            while (await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job.state != pb.JOB_STATE_RUNNING:
                await asyncio.sleep(0.02)  # polling until it runs
        await queue.nc.publish(queue.config.cancel_subject, job_id.encode())
        sequence = await scheduler.scheduler.store.pool.fetchval(
            "SELECT stream_sequence FROM jobs WHERE job_id = $1", job_id
        )
        advisory = {"stream_seq": sequence, "deliveries": 9}
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{queue.config.stream}.forged"
        await queue.nc.publish(subject, json.dumps(advisory).encode())
        final = (await watch_until_done(stub, job_id))[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 1, final
