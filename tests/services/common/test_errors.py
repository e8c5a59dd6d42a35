import grpc
import pytest
from grpc_status import rpc_status

from services.common.errors import (
    HTTP_STATUS_BY_CODE,
    InvalidArgument,
    MeshError,
    ModelNotFound,
    Unavailable,
    from_rpc_error,
    http_status,
    to_status,
)


class FakeRpcError(grpc.RpcError):
    """What a gRPC client sees: code, details and trailing metadata of a status."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self):  # noqa: ANN201
        return self._status.trailing_metadata


@pytest.mark.parametrize(
    ("error", "code", "http"),
    [
        (InvalidArgument("bad", param="temperature"), grpc.StatusCode.INVALID_ARGUMENT, 400),
        (ModelNotFound("x", ["a"]), grpc.StatusCode.NOT_FOUND, 404),
        (Unavailable("down"), grpc.StatusCode.UNAVAILABLE, 503),
        (MeshError("boom"), grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_domain_error_maps_to_grpc_and_http(error: MeshError, code: grpc.StatusCode, http: int) -> None:
    assert to_status(error).code == code
    assert http_status(error) == http


def test_status_round_trip_keeps_reason_and_param() -> None:
    original = ModelNotFound("nope", ["gemma"])
    rebuilt = from_rpc_error(FakeRpcError(to_status(original)))  # type: ignore[arg-type]
    assert rebuilt.code == grpc.StatusCode.NOT_FOUND
    assert rebuilt.reason == "MODEL_NOT_FOUND"
    assert rebuilt.param == "model"
    assert "nope" in rebuilt.message


def test_status_without_error_info_uses_code_name() -> None:
    status = grpc.Status()
    status.code, status.details, status.trailing_metadata = grpc.StatusCode.UNAVAILABLE, "connect failed", ()
    rebuilt = from_rpc_error(FakeRpcError(status))  # type: ignore[arg-type]
    assert isinstance(rebuilt, Unavailable)
    assert rebuilt.reason == "UNAVAILABLE"
    assert "unavailable" in rebuilt.message.lower()


def test_google_rpc_http_mapping() -> None:
    assert HTTP_STATUS_BY_CODE[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] == 504
    assert HTTP_STATUS_BY_CODE[grpc.StatusCode.CANCELLED] == 499


def test_status_details_are_a_google_rpc_status() -> None:
    status = rpc_status.from_call(FakeRpcError(to_status(InvalidArgument("x", param="n"))))  # type: ignore[arg-type]
    assert status is not None and len(status.details) == 1
