"""The internal token: required on every RPC, except health and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmmesh.inference.v1 import inference_service_pb2 as pb
from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.config import ServiceSettings
from services.common.grpc_client import open_channel
from services.common.registry import ModelRegistry, ModelSpec
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer
from tests.conftest import INTERNAL_TOKEN


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
async def test_calls_without_the_right_token_are_unauthenticated(inference: InferenceServer, token: str | None) -> None:
    async with open_channel(f"127.0.0.1:{inference.port}", token) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await stub.ListModels(pb.ListModelsRequest())
        assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            async for _ in stub.ChatStream(pb.ChatStreamRequest(request=pb.ChatRequest(model="mock"))):
                pass
        assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Probes need no token.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_right_token_passes(stub: pb_grpc.InferenceServiceStub) -> None:
    assert (await stub.ListModels(pb.ListModelsRequest())).models


async def test_messages_over_the_configured_size_are_refused() -> None:
    registry = ModelRegistry.from_specs([ModelSpec(name="mock", backend="mock")], default_model="mock")
    server = InferenceServer(InferenceSettings(port=0, max_message_bytes=2048), registry=registry)
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{server.port}", INTERNAL_TOKEN) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            message = pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text="x" * 4096)])
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.Chat(pb.ChatRequest(model="mock", messages=[message]))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(grace=0)


def test_services_refuse_to_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMMESH_INTERNAL_TOKEN")
    with pytest.raises(SystemExit, match="LLMMESH_INTERNAL_TOKEN"):
        ServiceSettings().required_internal_token()
