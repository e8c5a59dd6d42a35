"""The error bodies the gateway returns: OpenAI's everywhere, Anthropic's on the Anthropic
Messages API (/v1/messages) and to Anthropic clients of /v1/models, for the same errors and statuses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.common.errors import MeshError, bounded_message, http_status

log = logging.getLogger(__name__)


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    message = bounded_message(message)  # whatever it quotes, it is valid UTF-8 and bounded
    param = bounded_message(param)[:200] if param else param
    return {"error": {"message": message, "type": _error_type(status), "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=headers)


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
ANTHROPIC_PATHS = "/v1/messages"  # and below: the Anthropic Messages API
SHARED_PATHS = "/v1/models"  # and below: in both APIs; Anthropic's SDKs send anthropic-version


def speaks_anthropic(request: Request) -> bool:
    """Whether the request was made to Anthropic's API rather than OpenAI's."""
    path = request.url.path
    return path.startswith(ANTHROPIC_PATHS) or (
        path.startswith(SHARED_PATHS) and "anthropic-version" in request.headers
    )


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": bounded_message(message)}}


def mesh_error_body(error: MeshError) -> dict[str, Any]:
    return error_body(http_status(error), error.message, param=error.param, code=error.reason.lower())


def mesh_error_response(error: MeshError, anthropic: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_seconds)} if error.retry_after_seconds is not None else None
    status = http_status(error)
    body = anthropic_error_body(status, error.message) if anthropic else mesh_error_body(error)
    return JSONResponse(body, status_code=status, headers=headers)


def _response(request: Request, status: int, message: str, **fields: Any) -> JSONResponse:
    """An error in the body shape of the API the request was made to."""
    if speaks_anthropic(request):
        return JSONResponse(anthropic_error_body(status, message), status_code=status, headers=fields.get("headers"))
    return error_response(status, message, **fields)


def _validation_param(location: tuple[Any, ...]) -> str:
    # ("body", "messages", 0, "role") -> "messages.0.role"
    parts = [str(part) for part in location if part != "body"]
    # Union members show up as extra path parts ("str", "list[...]"): keep the field path only.
    return ".".join(part for part in parts if "[" not in part and part not in ("str", "int", "float", "bool"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MeshError)
    async def _mesh_error(request: Request, error: MeshError) -> JSONResponse:
        return mesh_error_response(error, anthropic=speaks_anthropic(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        param = _validation_param(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return _response(request, 400, "The request body is not valid JSON.", code="invalid_json")
        if first.get("type") == "string_unicode":  # the schema met it before admission's text rule did
            message = (
                f"'{param}' is not valid text: it holds a lone UTF-16 surrogate, which JSON allows and UTF-8 does not."
            )
            return _response(request, 400, message, param=param or None, code="invalid_text")
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else first.get("msg", "")
        return _response(request, 400, message, param=param or None, code="invalid_value")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _response(request, error.status_code, str(error.detail), headers=dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _response(request, 500, "Internal error; see the gateway log.", code="internal_error")
