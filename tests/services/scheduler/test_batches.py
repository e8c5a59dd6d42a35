"""Batch jobs on the scheduler: every item answered exactly once, across a killed worker, with
failures as results (services/scheduler/batches.py). The gateway's /v1/batches tests drive the
same jobs through the openai SDK (tests/services/gateway/test_batches.py)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path

from google.protobuf import json_format

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.scheduler.v1 import scheduler_service_pb2 as pb
from llmmesh.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from services.common.files import FileSettings, FileStore
from services.common.grpc_client import open_channel
from services.scheduler.batches import read_results
from tests.conftest import INTERNAL_TOKEN
from tests.services.scheduler.conftest import JOB_MODEL, MakeScheduler, watch_until_done
from tests.services.scheduler.test_worker import worker_process


def batch_job(files: FileStore, texts: list[str], concurrency: int = 2) -> pb.SubmitJobRequest:
    """A batch of chat items on the paced mock, its items written where the workers read them."""
    name = f"batch_{uuid.uuid4().hex}"
    items = []
    for index, text in enumerate(texts):
        message = inference_pb.ChatMessage(role=inference_pb.ROLE_USER)
        message.content.add(text=text)
        chat = inference_pb.ChatRequest(model=JOB_MODEL, messages=[message], request_id=f"{name}-{index}")
        items.append(pb.BatchItem(custom_id=f"line-{index}", chat=chat))
    files.put_object(f"{name}.items", "".join(json_format.MessageToJson(i, indent=None) + "\n" for i in items).encode())
    request = pb.BatchJobRequest(
        items_object=f"{name}.items",
        results_object=f"{name}.results",
        item_count=len(items),
        endpoint="/v1/chat/completions",
        concurrency=concurrency,
    )
    return pb.SubmitJobRequest(job_type=pb.JOB_TYPE_BATCH, request=pb.JobRequest(batch=request))


async def test_a_batch_resumes_after_its_worker_is_killed_and_answers_every_item_once(
    make_scheduler: MakeScheduler, tmp_path: Path, monkeypatch
) -> None:
    settings = FileSettings(dir=tmp_path)
    files = FileStore(settings)
    server = await make_scheduler(run_workers=False, files=settings, worker_job_types=["batch"])
    monkeypatch.setenv("LLMMESH_FILES_DIR", str(tmp_path))
    doomed = worker_process(server, job_types='["batch"]')
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            texts = [f"item {i} " + " ".join(["word"] * 40) for i in range(16)]  # ~0.4 s each at the mock's pace
            job_id = (await stub.SubmitJob(batch_job(files, texts))).job.job_id
            async with asyncio.timeout(60):  # until a checkpoint holds some answers
                async for response in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
                    if response.job.progress.metrics.get("completed", 0) >= 3:
                        break
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            saved_before, _ = read_results(
                files, f"{(await stub.GetJob(pb.GetJobRequest(job_id=job_id))).job.request.batch.results_object}"
            )
            assert 3 <= len(saved_before) < 16

            await server.start_worker()  # JetStream redelivers once AckWait passes
            final = (await watch_until_done(stub, job_id, timeout=90))[-1]
    finally:
        if doomed.poll() is None:
            doomed.kill()
    assert final.state == pb.JOB_STATE_SUCCEEDED and final.attempt == 2
    assert (final.result.batch.total, final.result.batch.completed, final.result.batch.failed) == (16, 16, 0)
    results, _ = read_results(files, final.result.batch.results_object)
    assert Counter(r.index for r in results) == Counter(range(16))  # each item once, none lost
    assert {r.custom_id for r in results} == {f"line-{i}" for i in range(16)}
    for result in results:
        assert result.chat.message.content[0].text.startswith(f"[mock-text:{JOB_MODEL}] item {result.index} ")


async def test_an_items_failure_is_its_result_and_the_batch_goes_on(make_scheduler: MakeScheduler, tmp_path) -> None:
    settings = FileSettings(dir=tmp_path)
    files = FileStore(settings)
    server = await make_scheduler(files=settings)
    async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        submitted = await stub.SubmitJob(batch_job(files, ["fine", "POISON pill", "also fine"]))
        final = (await watch_until_done(stub, submitted.job.job_id))[-1]
    assert final.state == pb.JOB_STATE_SUCCEEDED
    assert (final.result.batch.completed, final.result.batch.failed) == (2, 1)
    results = {r.custom_id: r for r in read_results(files, final.result.batch.results_object)[0]}
    assert results["line-1"].error.status_code == 500 and "mock backend failure" in results["line-1"].error.message
    assert results["line-0"].chat.message.content[0].text.endswith("fine")
