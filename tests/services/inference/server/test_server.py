"""The inference gRPC service end to end through generated stubs (mock backend)."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llmmesh.inference.v1 import inference_service_pb2 as pb
from services.common.exit_codes import IDLE_SHUTDOWN_EXIT_CODE
from services.inference.server.server import InferenceServer, model_health_name
from tests.conftest import GEMMA


def user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])


async def test_chat_returns_the_mock_reply(stub) -> None:
    response = await stub.Chat(pb.ChatRequest(model="mock", messages=[user("hello world")], request_id="abc"))
    assert response.message.content[0].text == "[mock-text:mock] hello world"
    assert response.message.role == pb.ROLE_ASSISTANT
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.request_id == "abc"
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


async def test_chat_stream_ends_with_finish_reason_and_usage(stub) -> None:
    chunks = [
        c
        async for c in stub.ChatStream(
            pb.ChatStreamRequest(request=pb.ChatRequest(model="mock-alias", messages=[user("a b c")]))
        )
    ]
    assert "".join(c.delta for c in chunks) == "[mock-text:mock] a b c"
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].usage.completion_tokens == 4
    assert {c.model for c in chunks} == {"mock"}  # aliases resolve to the registry name


async def test_max_tokens_ends_with_length(stub) -> None:
    response = await stub.Complete(
        pb.CompleteRequest(model="mock", prompt="one two three four", sampling=pb.SamplingParams(max_tokens=2))
    )
    assert response.text == "[mock-text:mock] one"
    assert response.finish_reason == pb.FINISH_REASON_LENGTH


async def test_complete_stream(stub) -> None:
    chunks = [
        c
        async for c in stub.CompleteStream(
            pb.CompleteStreamRequest(request=pb.CompleteRequest(model="mock", prompt="x y"))
        )
    ]
    assert "".join(c.delta for c in chunks) == "[mock-text:mock] x y"
    assert chunks[-1].usage.prompt_tokens == 2


async def test_list_and_get_models(stub, inference: InferenceServer) -> None:
    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert set(models) == {
        GEMMA,
        "gemma-hermes",
        "gemma-llama3-json",
        "gemma-hf",
        "gemma-hf-hermes",
        "gemma-batched",
        "mock",
        "mock-slow",
    }
    assert models[GEMMA].is_default and models[GEMMA].state == pb.MODEL_STATE_LOADED
    assert models[GEMMA].backend == "gguf" and list(models[GEMMA].aliases) == ["live", "background"]
    assert (await stub.GetModel(pb.GetModelRequest(name="live"))).model.name == GEMMA


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    return info


async def test_unknown_model_is_not_found_with_reason(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(pb.ChatRequest(model="nope", messages=[user("x")]))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(raised.value).reason == "MODEL_NOT_FOUND"


@pytest.mark.parametrize(
    ("request_message", "param"),
    [
        (pb.ChatRequest(model="mock"), "messages"),
        (pb.ChatRequest(model="mock", messages=[pb.ChatMessage(content=[pb.ContentPart(text="x")])]), "messages"),
        (pb.ChatRequest(model="mock", messages=[user("x")], sampling=pb.SamplingParams(temperature=9)), "temperature"),
        (pb.ChatRequest(model="mock", messages=[user("x")], sampling=pb.SamplingParams(max_tokens=-1)), "max_tokens"),
    ],
)
async def test_bad_input_is_invalid_argument(stub, request_message, param) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(request_message)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(raised.value).metadata["param"] == param


async def test_stream_errors_arrive_before_any_chunk(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.ChatStream(
            pb.ChatStreamRequest(request=pb.ChatRequest(model="nope", messages=[user("x")]))
        ):
            pytest.fail("no chunk expected")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_overall_and_per_model(channel, stub) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def status(name: str) -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

    assert await status("") == health_pb2.HealthCheckResponse.SERVING
    assert await status("llmmesh.inference.v1.InferenceService") == health_pb2.HealthCheckResponse.SERVING
    assert await status(model_health_name(GEMMA)) == health_pb2.HealthCheckResponse.SERVING
    await stub.Chat(pb.ChatRequest(model="mock", messages=[user("load me")]))
    assert await status(model_health_name("mock")) == health_pb2.HealthCheckResponse.SERVING


async def test_cancelled_stream_stops_the_backend(stub, inference: InferenceServer) -> None:
    from tests.conftest import loaded_backend, wait_until_idle

    call = stub.ChatStream(
        pb.ChatStreamRequest(request=pb.ChatRequest(model="mock-slow", messages=[user(" ".join(["w"] * 200))]))
    )
    async for _ in call:
        break
    call.cancel()
    backend = await loaded_backend(inference, "mock-slow")
    await wait_until_idle(backend)
    assert backend.stats.tokens_generated < 200


def test_idle_shutdown_ends_the_service_cleanly(tmp_path) -> None:
    """idle_shutdown_seconds: with nothing to do, the process shuts down as on SIGTERM, status 0."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "LLMMESH_INFERENCE_PORT": "0",
        "LLMMESH_INFERENCE_METRICS_PORT": "0",
        "LLMMESH_INFERENCE_PRELOAD_DEFAULT_MODEL": "false",
        "LLMMESH_INFERENCE_IDLE_SHUTDOWN_SECONDS": "1",
        "LLMMESH_INFERENCE_DATA_DIR": str(tmp_path),
    }
    process = subprocess.run(
        [sys.executable, "-m", "services.inference"], env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == IDLE_SHUTDOWN_EXIT_CODE, process.stderr[-2000:]  # the launcher stops the mesh
    assert "idle_shutdown_seconds" in process.stderr
