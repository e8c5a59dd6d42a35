"""Domain errors and the one place that maps them to gRPC and HTTP status codes.

Services raise `MeshError` subclasses from plain domain code. The gRPC
interceptor in `services.common.grpc_server` turns them into a
`google.rpc.Status` with one `ErrorInfo`; gRPC clients (the gateway) turn the
status back into a `MeshError` with `from_rpc_error`, and the gateway renders it
as an OpenAI error body with `http_status`.
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "llmmesh"
# The longest message an error carries: gRPC's trailers hold 16 KB in all, and a message longer
# than this is a bug at its source (an error quoting unbounded input).
MAX_MESSAGE_CHARS = 2000
QUOTE_CHARS = 64  # how much of a client's value an error quotes


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client's value as an error may quote it: at most `limit` characters, escaped (NUL,
    control characters, lone surrogates), and marked when cut, so that an error never echoes
    unbounded or unprintable input."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f"{text}... ({len(value) if isinstance(value, str) else '?'} characters)" if cut else text


def bounded_message(message: str) -> str:
    """`message` safe to send: valid UTF-8 and at most MAX_MESSAGE_CHARS."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "..."
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


class MeshError(Exception):
    """An error a client can act on. `reason` is a stable UPPER_SNAKE_CASE identifier."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        param: str | None = None,
        retry_after_seconds: int | None = None,
    ) -> None:
        message = bounded_message(message)
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.param = param
        self.retry_after_seconds = retry_after_seconds


class InvalidArgument(MeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(MeshError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class ModelNotFound(NotFound):
    default_reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"The model '{quote(model)}' does not exist. Known models and aliases: {', '.join(known) or 'none'}.",
            param="model",
        )


class FailedPrecondition(MeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(MeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(MeshError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(MeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(MeshError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Unauthenticated(MeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(MeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class AlreadyExists(MeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Unimplemented(MeshError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(MeshError):
    pass


_ERROR_BY_CODE: dict[grpc.StatusCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unauthenticated,
        PermissionDenied,
        AlreadyExists,
        Unimplemented,
        Internal,
    )
}

# google.rpc's HTTP mapping (google/rpc/code.proto), plus 499 for a client that went away.
HTTP_STATUS_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status(error: MeshError) -> int:
    return HTTP_STATUS_BY_CODE.get(error.code, 500)


def to_status(error: MeshError) -> grpc.Status:
    """The gRPC status for `error`, carrying one ErrorInfo (AIP-193)."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    if error.param:
        info.metadata["param"] = error.param
    details = [info]
    if error.retry_after_seconds is not None:
        details.append(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=error.retry_after_seconds))
        )
    packed = []
    for detail in details:
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)
    return rpc_status.to_status(status)


def from_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> MeshError:
    """Rebuild the domain error a gRPC server sent, keeping its reason and param."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or code.name  # type: ignore[attr-defined]
    reason, param, retry_after = None, None, None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # malformed trailers from a foreign server
        status = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, param = info.reason, info.metadata.get("param")
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:  # the transport's: not connected, or restarting
        message = f"Upstream service unavailable: {message}"
        retry_after = retry_after if retry_after is not None else 1
    error_class = _ERROR_BY_CODE.get(code, Internal)
    mesh_error = error_class(message, reason=reason or code.name, param=param, retry_after_seconds=retry_after)
    mesh_error.code = code  # type: ignore[misc]  # keep codes we have no class for (e.g. UNIMPLEMENTED)
    return mesh_error
