"""The scheduler end to end: real nats-server, PostgreSQL, inference and embeddings over gRPC."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from prometheus_client import REGISTRY

from llmmesh.embeddings.v1 import embeddings_service_pb2 as embeddings_pb
from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.fleet import FleetSettings, NodeSpec
from services.common.grpc_client import open_channel
from services.inference.backends.managed.runtime import free_port
from services.inference.server.server import InferenceServer
from services.scheduler.callbacks import verify
from services.scheduler.server import SchedulerServer
from tests.conftest import INTERNAL_TOKEN
from tests.services.scheduler.conftest import (
    CALLBACK_SECRET,
    JOB_MODEL,
    CallbackReceiver,
    MakeScheduler,
    wait_for_callback,
    watch_until_done,
)


def chat_job(text: str = "hello jobs", **fields: object) -> pb.SubmitJobRequest:
    message = inference_pb.ChatMessage(role=inference_pb.ROLE_USER)
    message.content.add(text=text)
    request = pb.JobRequest(chat=inference_pb.ChatRequest(model="background", messages=[message]))
    return pb.SubmitJobRequest(job_type=pb.JOB_TYPE_CHAT, request=request, **fields)  # type: ignore[arg-type]


async def test_chat_job_runs_on_background_slot_and_calls_back_signed(
    jobs: pb_grpc.SchedulerServiceStub, callbacks: CallbackReceiver, scheduler: SchedulerServer
) -> None:
    submitted = await jobs.SubmitJob(chat_job(callback_url=f"{callbacks.url}/hook"))
    job_id = submitted.job.job_id
    assert submitted.job.state == pb.JOB_STATE_QUEUED and not submitted.deduplicated

    updates = await watch_until_done(jobs, job_id)

    states = [u.state for u in updates]
    assert states[0] in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    assert pb.JOB_STATE_RUNNING in states and states[-1] == pb.JOB_STATE_SUCCEEDED
    final = updates[-1]
    assert final.attempt == 1
    assert final.result.chat.model == JOB_MODEL
    assert final.result.chat.message.content[0].text == f"[mock-text:{JOB_MODEL}] hello jobs"
    assert final.result.chat.finish_reason == inference_pb.FINISH_REASON_STOP

    headers, body = await callbacks.wait_for(job_id)
    assert verify(CALLBACK_SECRET.encode(), headers["x-llmmesh-signature"], body)
    assert not verify(b"another secret", headers["x-llmmesh-signature"], body)
    payload = json.loads(body)
    assert payload["id"] == job_id and payload["state"] == "succeeded" and payload["job_type"] == "chat"
    assert payload["result"]["message"]["content"][0]["text"].endswith("hello jobs")
    delivered = await wait_for_callback(jobs, scheduler, job_id)
    assert delivered.callback_state == pb.CALLBACK_STATE_DELIVERED and delivered.callback_attempts == 1


async def test_duplicate_submission_returns_the_same_job_and_runs_once(
    jobs: pb_grpc.SchedulerServiceStub, callbacks: CallbackReceiver
) -> None:
    request = chat_job(job_id="dup-1", idempotency_key="k1", callback_url=f"{callbacks.url}/hook")
    first = await jobs.SubmitJob(request)
    second = await jobs.SubmitJob(request)
    assert second.deduplicated and second.job.job_id == first.job.job_id == "dup-1"

    final = (await watch_until_done(jobs, "dup-1"))[-1]
    again = await jobs.SubmitJob(request)  # long after: still the same job, nothing queued
    assert again.deduplicated and again.job.state == pb.JOB_STATE_SUCCEEDED
    assert final.attempt == 1
    await callbacks.wait_for("dup-1")
    assert len(callbacks.received["dup-1"]) == 1

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(chat_job(job_id="dup-1", idempotency_key="other"))
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS

    by_key = [await jobs.SubmitJob(chat_job(idempotency_key="only-a-key")) for _ in range(2)]
    assert by_key[0].job.job_id == by_key[1].job.job_id and by_key[1].deduplicated


async def test_embed_job_runs_on_the_embeddings_service(jobs: pb_grpc.SchedulerServiceStub) -> None:
    request = pb.JobRequest(embed=embeddings_pb.EmbedRequest(texts=["a cat", "a dog"]))
    submitted = await jobs.SubmitJob(pb.SubmitJobRequest(job_type=pb.JOB_TYPE_EMBED, request=request))
    final = (await watch_until_done(jobs, submitted.job.job_id))[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED, final.error
    assert len(final.result.embed.embeddings) == 2 and final.result.embed.dimensions == 384


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (
            pb.SubmitJobRequest(job_type=pb.JOB_TYPE_ADAPTER_TRAIN, request=pb.JobRequest(adapter_train={})),
            grpc.StatusCode.INVALID_ARGUMENT,  # no base model, no dataset
        ),
        (pb.SubmitJobRequest(request=chat_job().request), grpc.StatusCode.INVALID_ARGUMENT),  # no job_type
        (pb.SubmitJobRequest(job_type=pb.JOB_TYPE_EMBED, request=chat_job().request), grpc.StatusCode.INVALID_ARGUMENT),
        (chat_job(job_id="bad id with spaces"), grpc.StatusCode.INVALID_ARGUMENT),
        (chat_job(ttl_seconds=-5), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_submissions_are_rejected(
    jobs: pb_grpc.SchedulerServiceStub, request_: pb.SubmitJobRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(request_)
    assert error.value.code() == code


async def test_chat_jobs_only_run_on_the_background_slot(jobs: pb_grpc.SchedulerServiceStub) -> None:
    request = chat_job()
    request.request.chat.model = "some-other-model"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "background" in error.value.details()


async def test_vision_job_needs_a_multimodal_background_model(jobs: pb_grpc.SchedulerServiceStub) -> None:
    request = chat_job()
    request.job_type = pb.JOB_TYPE_VISION
    request.request.chat.messages[0].content.add(image=inference_pb.ImagePart(url="data:image/png;base64,iVBORw0KGgo="))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(request)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not multimodal" in error.value.details()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "http://[::1]/hook",
        "http://2130706433/hook",  # 127.0.0.1 in decimal
        "http://0x7f000001/hook",  # ... and in hex
        "http://0251.0376.0251.0376/",  # 169.254.169.254 in octal
        "http://10.0.0.5/hook",
        "http://0.0.0.0/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
    ],
)
async def test_callback_urls_to_private_places_are_rejected(jobs: pb_grpc.SchedulerServiceStub, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.SubmitJob(chat_job(callback_url=url))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback_url" in error.value.details()


async def test_callback_redirects_are_not_followed(
    jobs: pb_grpc.SchedulerServiceStub, callbacks: CallbackReceiver, scheduler: SchedulerServer
) -> None:
    submitted = await jobs.SubmitJob(chat_job(callback_url=f"{callbacks.url}/redirect"))
    job_id = submitted.job.job_id
    await watch_until_done(jobs, job_id)
    job = await wait_for_callback(jobs, scheduler, job_id)
    assert job.callback_state == pb.CALLBACK_STATE_FAILED and job.callback_attempts == 3
    assert job_id not in callbacks.received


async def test_ttl_expiry_means_the_job_never_runs(make_scheduler: MakeScheduler) -> None:
    server = await make_scheduler(run_workers=False)
    async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        submitted = await stub.SubmitJob(chat_job(ttl_seconds=1))
        final = (await watch_until_done(stub, submitted.job.job_id))[-1]
        assert final.state == pb.JOB_STATE_EXPIRED and final.attempt == 0

        # A worker that comes along later drops the message without running it.
        await server.start_worker()
        js = server.queue.js
        async with asyncio.timeout(30):
            while (await js.stream_info(server.settings.stream_name)).state.messages:
                await asyncio.sleep(0.05)
        job = (await stub.GetJob(pb.GetJobRequest(job_id=submitted.job.job_id))).job
        assert job.state == pb.JOB_STATE_EXPIRED and job.attempt == 0


async def test_cancelling_a_queued_job(make_scheduler: MakeScheduler, callbacks: CallbackReceiver) -> None:
    server = await make_scheduler(run_workers=False)
    async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        submitted = await stub.SubmitJob(chat_job(callback_url=f"{callbacks.url}/hook"))
        cancelled = (await stub.CancelJob(pb.CancelJobRequest(job_id=submitted.job.job_id))).job
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        _, body = await callbacks.wait_for(submitted.job.job_id)
        assert json.loads(body)["state"] == "cancelled"
        again = (await stub.CancelJob(pb.CancelJobRequest(job_id=submitted.job.job_id))).job
        assert again.state == pb.JOB_STATE_CANCELLED


async def test_cancelling_a_running_job_stops_it(jobs: pb_grpc.SchedulerServiceStub) -> None:
    submitted = await jobs.SubmitJob(chat_job(" ".join(["word"] * 3000)))  # 30 s at the mock's pace
    job_id = submitted.job.job_id
    async for response in jobs.WatchJob(pb.WatchJobRequest(job_id=job_id)):
        if response.job.state == pb.JOB_STATE_RUNNING:
            break
    cancelled = (await jobs.CancelJob(pb.CancelJobRequest(job_id=job_id))).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    final = (await watch_until_done(jobs, job_id, timeout=10))[-1]
    assert final.state == pb.JOB_STATE_CANCELLED and not final.HasField("result")


async def test_list_jobs_filters_and_pages(jobs: pb_grpc.SchedulerServiceStub) -> None:
    ids = [(await jobs.SubmitJob(chat_job(owner="lister"))).job.job_id for _ in range(5)]
    await jobs.SubmitJob(chat_job(owner="someone-else"))
    seen: list[str] = []
    token = ""
    while True:
        page = await jobs.ListJobs(pb.ListJobsRequest(owner="lister", page_size=2, page_token=token))
        seen += [job.job_id for job in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    embed_only = await jobs.ListJobs(pb.ListJobsRequest(owner="lister", job_types=[pb.JOB_TYPE_EMBED]))
    assert not embed_only.jobs
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await jobs.GetJob(pb.GetJobRequest(job_id=ids[0], owner="someone-else"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_jobs_and_callbacks_are_counted(
    jobs: pb_grpc.SchedulerServiceStub, callbacks: CallbackReceiver, scheduler: SchedulerServer
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        state: sample("llmmesh:jobs_total", job_type="chat", state=state)
        for state in ("queued", "running", "succeeded")
    }
    delivered = sample("llmmesh:job_callback_attempts_total", outcome="delivered")
    waits = sample("llmmesh:job_queue_wait_seconds_count", job_type="chat")
    submitted = await jobs.SubmitJob(chat_job(callback_url=f"{callbacks.url}/hook"))
    await watch_until_done(jobs, submitted.job.job_id)
    await wait_for_callback(jobs, scheduler, submitted.job.job_id)
    # A transition is counted once its UPDATE returns, which can be just after a watcher saw it.
    async with asyncio.timeout(10):
        while any(sample("llmmesh:jobs_total", job_type="chat", state=s) < before[s] + 1 for s in before):
            await asyncio.sleep(0.05)
    for state in before:
        assert sample("llmmesh:jobs_total", job_type="chat", state=state) == before[state] + 1, state
    assert sample("llmmesh:job_callback_attempts_total", outcome="delivered") == delivered + 1
    assert sample("llmmesh:job_queue_wait_seconds_count", job_type="chat") == waits + 1


async def test_jobs_take_the_fleets_routes_when_the_home_inference_is_down(
    make_scheduler: MakeScheduler, job_inference: InferenceServer
) -> None:
    """The scheduler routes through the same FleetClient as the gateway: with its own inference
    service gone, a node of the fleet that serves the background slot runs the job."""
    node = NodeSpec(name="jobs-node", address=f"127.0.0.1:{job_inference.port}")
    fleet = FleetSettings(nodes=[node], probe_seconds=0.2)
    scheduler = await make_scheduler(inference_target=f"127.0.0.1:{free_port()}", fleet=fleet)
    async with open_channel(f"127.0.0.1:{scheduler.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        submitted = await stub.SubmitJob(chat_job("routed"))
        final = (await watch_until_done(stub, submitted.job.job_id))[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert final.result.chat.message.content[0].text == f"[mock-text:{JOB_MODEL}] routed"
