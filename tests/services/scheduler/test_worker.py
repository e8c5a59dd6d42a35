"""Workers under failure: a killed worker process, a poison job, a NATS restart mid-burst."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import grpc

from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.embedded_nats import EmbeddedNats
from services.common.grpc_client import open_channel
from services.scheduler.server import SchedulerServer
from tests.conftest import INTERNAL_TOKEN
from tests.services.scheduler.conftest import CallbackReceiver, MakeScheduler, wait_for_callback, watch_until_done
from tests.services.scheduler.test_server import chat_job


def worker_process(server: SchedulerServer, job_types: str = '["chat"]') -> subprocess.Popen[bytes]:
    """`python -m services.scheduler.worker` with the same settings as `server`."""
    settings = server.settings
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(["gen", "."]),
        "LLMMESH_SCHEDULER_NATS_URL": settings.nats_url,
        "LLMMESH_SCHEDULER_DATABASE_URL": settings.database_url,
        "LLMMESH_SCHEDULER_INFERENCE_TARGET": settings.inference_target,
        "LLMMESH_SCHEDULER_EMBEDDINGS_TARGET": settings.embeddings_target,
        "LLMMESH_SCHEDULER_STREAM_NAME": settings.stream_name,
        "LLMMESH_SCHEDULER_ACK_WAIT_SECONDS": str(settings.ack_wait_seconds),
        "LLMMESH_SCHEDULER_MAX_DELIVER": str(settings.max_deliver),
        "LLMMESH_SCHEDULER_WORKER_JOB_TYPES": job_types,
    }
    return subprocess.Popen([sys.executable, "-m", "services.scheduler.worker"], env=env)


async def test_a_worker_killed_mid_job_is_replaced_and_the_job_completes_once(
    make_scheduler: MakeScheduler, callbacks: CallbackReceiver
) -> None:
    server = await make_scheduler(run_workers=False)
    doomed = worker_process(server)
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            text = " ".join(["slow"] * 300)  # 3 s at the mock's pace
            submitted = await stub.SubmitJob(chat_job(text, callback_url=f"{callbacks.url}/hook"))
            job_id = submitted.job.job_id
            async with asyncio.timeout(60):
                async for response in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
                    if response.job.state == pb.JOB_STATE_RUNNING:
                        break
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()

            await server.start_worker()  # JetStream redelivers once AckWait passes
            final = (await watch_until_done(stub, job_id))[-1]
            assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
            assert final.result.chat.message.content[0].text.endswith("slow")
            await wait_for_callback(stub, server, job_id)
            assert len(callbacks.received[job_id]) == 1
    finally:
        if doomed.poll() is None:
            doomed.kill()


async def test_a_poison_job_fails_after_max_deliver_with_a_dead_letter(scheduler: SchedulerServer) -> None:
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        submitted = await stub.SubmitJob(chat_job("POISON pill"))
        updates = await watch_until_done(stub, submitted.job.job_id)
    final = updates[-1]
    assert final.state == pb.JOB_STATE_FAILED
    assert final.attempt == scheduler.settings.max_deliver == 3
    assert "mock backend failure" in final.error
    dead = await scheduler.scheduler.store.dead_letter(final.job_id)
    assert dead is not None and dead["deliveries"] == 3 and dead["stream_sequence"] >= 1
    assert "mock backend failure" in dead["error"]


async def test_nats_restart_during_a_submit_burst_loses_no_accepted_job(
    make_scheduler: MakeScheduler, nats_server: EmbeddedNats
) -> None:
    server = await make_scheduler(publish_timeout_seconds=1.0)
    async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)

        async def submit(index: int) -> tuple[str, grpc.StatusCode]:
            try:
                response = await stub.SubmitJob(chat_job(f"burst {index}", job_id=f"burst-{index}"))
                return response.job.job_id, grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                return f"burst-{index}", error.code()

        before = [asyncio.create_task(submit(i)) for i in range(10)]
        await asyncio.to_thread(nats_server.stop)
        during = await asyncio.gather(*(submit(i) for i in range(10, 20)))  # down longer than the publish timeout
        await asyncio.to_thread(nats_server.start)  # same port, same JetStream store
        after = await asyncio.gather(*(submit(i) for i in range(20, 30)))
        outcomes = [*await asyncio.gather(*before), *during, *after]
        assert all(code == grpc.StatusCode.UNAVAILABLE for _, code in during)

        assert {code for _, code in outcomes} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        accepted = [job_id for job_id, code in outcomes if code == grpc.StatusCode.OK]
        refused = [job_id for job_id, code in outcomes if code != grpc.StatusCode.OK]
        for job_id in accepted:
            final = (await watch_until_done(stub, job_id, timeout=90))[-1]
            assert final.state == pb.JOB_STATE_SUCCEEDED, (job_id, final.error)
        for job_id in refused:  # refused means not queued: no record, and it never runs
            try:
                await stub.GetJob(pb.GetJobRequest(job_id=job_id))
                raise AssertionError(f"{job_id} got 503 but exists")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND
