"""Rejects request bodies over a size limit with 413, before they are buffered whole."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ANTHROPIC_PATHS, anthropic_error_body, error_body


class BodySizeLimitMiddleware:
    """`max_bytes` for every path but those in `path_limits` (uploads: larger)."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.default_max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await self._reject(send, max_bytes, scope["path"])
            return

        received = 0
        too_large = rejected = False

        async def limited_receive() -> Message:
            # Chunked bodies declare no length: count while reading, and past the limit end the
            # body early. Whatever the app then answers is replaced by the 413 (guarded_send).
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal rejected
            if not too_large:
                await send(message)
            elif not rejected:
                rejected = True
                await self._reject(send, max_bytes, scope["path"])

        await self.app(scope, limited_receive, guarded_send)
        if too_large and not rejected:
            await self._reject(send, max_bytes, scope["path"])

    async def _reject(self, send: Send, max_bytes: int, path: str) -> None:
        """413 in the error shape of the API family the path belongs to."""
        message = f"The request body exceeds the limit of {max_bytes} bytes."
        if path.startswith(ANTHROPIC_PATHS):
            body = json.dumps(anthropic_error_body(413, message)).encode()
        else:
            body = json.dumps(error_body(413, message, code="request_too_large")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
