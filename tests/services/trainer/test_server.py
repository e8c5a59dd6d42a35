"""The trainer over gRPC: bad plans, datasets from S3, the identity cache, and a training
subprocess killed mid-run (the job fails, the service stays healthy)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from llmmesh.trainer.v1 import trainer_service_pb2_grpc as pb_grpc
from services.common.grpc_client import open_channel
from services.gateway.protocol.training import TrainAdapterIn
from services.trainer.domain import TrainingState, TrainRequest
from services.trainer.server import TrainerServer
from tests.conftest import ADAPTER_BUCKET, INTERNAL_TOKEN, SECRET_EXAMPLES, TRAINING_REQUEST


@pytest_asyncio.fixture
async def stub(trainer: TrainerServer) -> AsyncIterator[pb_grpc.TrainerServiceStub]:
    async with open_channel(f"127.0.0.1:{trainer.port}", INTERNAL_TOKEN) as channel:
        yield pb_grpc.TrainerServiceStub(channel)


def plan(training_id: str = "", **changes: object) -> pb.TrainAdapterRequest:
    return TrainAdapterIn.model_validate({**TRAINING_REQUEST, **changes}).to_pb(training_id)


def with_modules(*modules: str) -> pb.TrainAdapterRequest:
    """A plan whose target modules the gateway would refuse: gRPC callers are checked too."""
    request = plan()
    request.hyperparameters.target_modules[:] = modules
    return request


def chat(*turns: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (plan(base_model="no-such-model"), grpc.StatusCode.NOT_FOUND),
        (plan(base_model="mock"), grpc.StatusCode.INVALID_ARGUMENT),  # no weights to train
        (plan(dataset=[chat(("user", "hi"), ("user", "again"))]), grpc.StatusCode.INVALID_ARGUMENT),
        (plan(dataset=[chat(("user", "hi"), ("assistant", " "))]), grpc.StatusCode.INVALID_ARGUMENT),
        (plan(dataset="s3://llmmesh-adapters/datasets/missing.jsonl"), grpc.StatusCode.NOT_FOUND),
        (plan(dataset="https://example.com/data.jsonl"), grpc.StatusCode.INVALID_ARGUMENT),
        # Over the trainer's limits (LLMMESH_TRAINER_MAX_EPOCHS, _MAX_STEPS): refused before anything runs.
        (plan(hyperparameters={"epochs": 1000}), grpc.StatusCode.INVALID_ARGUMENT),
        (plan(hyperparameters={"max_steps": 2_000_000_000}), grpc.StatusCode.INVALID_ARGUMENT),
        # Another tenant's data, or any bucket the trainer's credentials reach: refused before any read.
        (plan(dataset="s3://llmmesh-adapters/adapters/someone-else.jsonl"), grpc.StatusCode.INVALID_ARGUMENT),
        (plan(dataset="s3://llmmesh-adapters/datasets-private/x.jsonl"), grpc.StatusCode.INVALID_ARGUMENT),
        (plan(dataset="s3://other-bucket/datasets/x.jsonl"), grpc.StatusCode.INVALID_ARGUMENT),
        (with_modules("q_proj; rm -rf"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.TrainAdapterRequest(base_model="gemma-3-270m"), grpc.StatusCode.INVALID_ARGUMENT),  # no dataset
        (plan(training_id="../../etc"), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_bad_plans_are_refused(
    stub: pb_grpc.TrainerServiceStub, request_: pb.TrainAdapterRequest, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.TrainAdapter(request_)
    assert refused.value.code() == code, refused.value.details()


async def test_a_dataset_from_s3_with_the_same_examples_is_the_same_adapter(
    stub: pb_grpc.TrainerServiceStub, s3_server: str, trained_job: list[dict[str, object]]
) -> None:
    """Identity is a hash of what is trained, not of where it came from: a cache hit, no run."""
    jsonl = "\n".join(json.dumps(example) for example in SECRET_EXAMPLES)
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.put_object(Bucket=ADAPTER_BUCKET, Key="datasets/secret.jsonl", Body=jsonl.encode())
    request = plan(dataset=f"s3://{ADAPTER_BUCKET}/datasets/secret.jsonl")
    request.owner = "anonymous"  # who trained it through the gateway: the owner is part of the identity
    response = await stub.TrainAdapter(request)
    assert response.job.cached and response.job.state == pb.TRAINING_STATE_SUCCEEDED
    assert response.job.adapter_id == trained_job[-1]["result"]["adapter_id"]  # type: ignore[index]
    listed = await stub.ListAdapters(pb.ListAdaptersRequest(base_model="gemma-3-270m"))
    assert response.job.adapter_id in [a.adapter_id for a in listed.adapters]


async def test_killing_the_training_process_fails_the_job_and_the_service_stays_healthy(
    stub: pb_grpc.TrainerServiceStub, trainer: TrainerServer
) -> None:
    started = await stub.TrainAdapter(plan(hyperparameters={"max_steps": 200, "batch_size": 1, "seed": 7}))
    training_id = started.job.training_id
    states = []
    async for update in stub.WatchTraining(pb.WatchTrainingRequest(training_id=training_id)):
        states.append(update.job.state)
        child = trainer.trainer._children.get(training_id)
        if update.job.step >= 1 and child is not None and child.process is not None:
            os.killpg(child.process.pid, signal.SIGKILL)  # as the OOM killer would
    final = update.job
    assert pb.TRAINING_STATE_RUNNING in states
    assert final.state == pb.TRAINING_STATE_FAILED and "SIGKILL" in final.error, final.error
    async with open_channel(f"127.0.0.1:{trainer.port}", INTERNAL_TOKEN) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await stub.GetTrainingJob(pb.GetTrainingJobRequest(training_id=training_id))).job.state == final.state
    assert final.adapter_id not in [a.adapter_id for a in (await stub.ListAdapters(pb.ListAdaptersRequest())).adapters]


async def test_cancel_stops_a_run(stub: pb_grpc.TrainerServiceStub, trainer: TrainerServer) -> None:
    started = await stub.TrainAdapter(plan(hyperparameters={"max_steps": 200, "batch_size": 1, "seed": 8}))
    cancelled = await stub.CancelTraining(pb.CancelTrainingRequest(training_id=started.job.training_id))
    assert cancelled.job.state == pb.TRAINING_STATE_CANCELLED
    async for update in stub.WatchTraining(pb.WatchTrainingRequest(training_id=started.job.training_id)):
        final = update.job
    assert final.state == pb.TRAINING_STATE_CANCELLED
    async with asyncio.timeout(30):  # the killed child is reaped
        while started.job.training_id in trainer.trainer._children:
            await asyncio.sleep(0.01)


async def test_unknown_jobs_and_adapters(stub: pb_grpc.TrainerServiceStub) -> None:
    for call in (
        stub.GetTrainingJob(pb.GetTrainingJobRequest(training_id="nope")),
        stub.DeleteAdapter(pb.DeleteAdapterRequest(adapter_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_training_can_free_the_inference_models_first(tmp_path) -> None:
    """One GPU for both: inference unloads its models for the run and loads them again after."""
    from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
    from llmmesh.inference.v1 import inference_service_pb2_grpc as inference_grpc
    from services.common.artifacts import ArtifactSettings
    from services.common.registry import ModelRegistry, ModelSpec
    from services.inference.config import InferenceSettings
    from services.inference.server.server import InferenceServer
    from services.trainer.config import TrainerSettings
    from tests.conftest import build_test_registry

    inference = InferenceServer(
        InferenceSettings(port=0, database_url=None),
        registry=ModelRegistry.from_specs([ModelSpec(name="mock", backend="mock")], default_model="mock"),
    )
    await inference.start()
    settings = TrainerSettings(
        port=0,
        data_dir=tmp_path,
        inference_target=f"127.0.0.1:{inference.port}",
        free_inference_memory=True,
        transformers_cache_dir=Path(".data/transformers").resolve(),
    )
    trainer = TrainerServer(settings, build_test_registry(), ArtifactSettings(dir=tmp_path / "adapters"))  # type: ignore[call-arg]
    await trainer.start()
    try:
        async with open_channel(f"127.0.0.1:{inference.port}", INTERNAL_TOKEN) as channel:
            models = inference_grpc.InferenceServiceStub(channel)
            await models.LoadModel(inference_pb.LoadModelRequest(name="mock"))

            async def mock_state() -> int:
                return (await models.GetModel(inference_pb.GetModelRequest(name="mock"))).model.state

            tiny = {"max_steps": 1, "batch_size": 1, "max_seq_length": 32, "seed": 11}
            job = await trainer.trainer.submit(TrainRequest.from_pb(plan(hyperparameters=tiny)))
            during = []
            async for update in trainer.trainer.watch(job.training_id):
                if update.state is TrainingState.RUNNING:
                    during.append(await mock_state())
            assert update.state is TrainingState.SUCCEEDED, update.error
            assert inference_pb.MODEL_STATE_UNLOADED in during
            assert await mock_state() == inference_pb.MODEL_STATE_LOADED
    finally:
        await trainer.stop(grace=1)
        await inference.stop(grace=1)


async def test_a_cancel_while_the_run_checks_the_store_is_not_overwritten(
    trainer: TrainerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run looks for a stored adapter before it starts; a cancel arriving meanwhile wins."""
    import threading

    store, release, calls = trainer.trainer.artifacts, threading.Event(), []
    original = store.get

    def slow_get(adapter_id: str):  # type: ignore[no-untyped-def]
        calls.append(adapter_id)
        if len(calls) == 2:  # the run's own check, after the one at submit
            release.wait(30)
        return original(adapter_id)

    monkeypatch.setattr(store, "get", slow_get)
    job = await trainer.trainer.submit(TrainRequest.from_pb(plan(hyperparameters={"max_steps": 500, "seed": 12})))
    async with asyncio.timeout(120):
        while len(calls) < 2:
            await asyncio.sleep(0.01)  # polls for the run to reach its check
    await trainer.trainer.cancel(job.training_id)
    release.set()
    await asyncio.wait(set(trainer.trainer._tasks), timeout=10)  # the run gives up at once
    try:
        assert trainer.trainer.get(job.training_id).state.value == "cancelled"
        assert job.training_id not in trainer.trainer._children
    finally:
        if (child := trainer.trainer._children.get(job.training_id)) is not None:
            child.kill()  # never leave a run behind


async def test_grpcurl_style_reflection_lists_the_trainer(trainer: TrainerServer) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    def services() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    listed = await asyncio.to_thread(services)
    assert {"llmmesh.trainer.v1.TrainerService", "grpc.health.v1.Health"} <= set(listed)


async def test_a_run_past_its_wall_clock_limit_is_killed_and_fails(tmp_path: Path) -> None:
    from services.common.artifacts import ArtifactSettings
    from services.trainer.config import TrainerSettings
    from tests.conftest import build_test_registry

    settings = TrainerSettings(
        port=0,
        data_dir=tmp_path,
        max_run_seconds=1.0,  # the child is still loading the model by then
        transformers_cache_dir=Path(".data/transformers").resolve(),
    )
    trainer = TrainerServer(settings, build_test_registry(), ArtifactSettings(dir=tmp_path / "adapters"))  # type: ignore[call-arg]
    await trainer.start()
    try:
        job = await trainer.trainer.submit(TrainRequest.from_pb(plan(hyperparameters={"max_steps": 3, "seed": 12})))
        async with asyncio.timeout(60):
            updates = [update async for update in trainer.trainer.watch(job.training_id)]
        update = updates[-1]
        assert update.state is TrainingState.FAILED and "wall-clock limit of 1 s" in update.error, update
        assert not trainer.trainer._children  # the child is gone
    finally:
        await trainer.stop(grace=1)
