"""What grpcurl does: discover services by reflection and call Chat from JSON, with no generated code."""

import asyncio

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.inference.server.server import InferenceServer
from tests.conftest import INTERNAL_TOKEN

SERVICE = "llmmesh.inference.v1.InferenceService"


def grpcurl(port: int, method: str, body: str) -> tuple[list[str], dict]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = database.get_services()
        pool = descriptor_pool.DescriptorPool(database)
        method_descriptor = pool.FindServiceByName(SERVICE).FindMethodByName(method)
        request_class = message_factory.GetMessageClass(method_descriptor.input_type)
        response_class = message_factory.GetMessageClass(method_descriptor.output_type)
        call = channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        # Reflection needs no token; calls do, as with grpcurl -H x-internal-token:...
        metadata = [("x-internal-token", INTERNAL_TOKEN)]
        response = call(json_format.Parse(body, request_class()), timeout=30, metadata=metadata)
        return list(services), json_format.MessageToDict(response)


async def test_reflection_lists_services_and_invokes_chat_from_json(inference: InferenceServer) -> None:
    body = '{"model": "mock", "messages": [{"role": "ROLE_USER", "content": [{"text": "hi from json"}]}]}'
    services, response = await asyncio.to_thread(grpcurl, inference.port, "Chat", body)
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert response["message"]["content"][0]["text"] == "[mock-text:mock] hi from json"
    assert response["finishReason"] == "FINISH_REASON_STOP"
