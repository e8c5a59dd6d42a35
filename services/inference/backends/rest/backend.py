"""The REST backend: a shared async httpx client per model, retries on connection errors,
streaming for every provider that streams, and upstream errors mapped to clear statuses
that never carry the upstream's secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
)
from services.inference.api import Chunk
from services.inference.backends.base import Backend
from services.inference.backends.rest.config import RestOptions, resolve_config
from services.inference.generation import GenerationRequest
from services.upstream.config import Provider, RestConfig
from services.upstream.dialects import (
    HttpCall,
    StreamState,
    UpstreamRequest,
    UpstreamStreamError,
    build_call,
    parse_answer,
    parse_stream_event,
)
from services.upstream.events import read_events

log = logging.getLogger(__name__)

_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


class RestBackend(Backend):
    Options = RestOptions
    options: RestOptions
    supports_images: ClassVar[bool] = True
    slot_specific: ClassVar[bool] = True
    supports_structured_output: ClassVar[bool] = True  # passed through; refused per provider in build_call

    async def load(self) -> None:
        try:
            self.config: RestConfig = resolve_config(self.spec.name, self.spec.path, self.options)
        except ValueError as error:
            raise Unavailable(str(error), reason="MODEL_LOAD_FAILED") from error
        self._client = httpx.AsyncClient(
            base_url=self.config.url,
            headers=self.config.headers(),
            timeout=httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout)),
            follow_redirects=False,
        )
        log.info("REST model '%s' -> %s %s", self.spec.name, self.config.provider.value, self._redact(self.config.url))

    async def unload(self) -> None:
        await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        """The upstream's pooled client (base URL, headers, timeout), for calls besides generation."""
        return self._client

    async def check_health(self) -> None:
        if self._client.is_closed:
            raise Unavailable(f"REST model '{self.spec.name}' is unloaded")

    @property
    def streams(self) -> bool:
        return self.config.provider is not Provider.GENERIC

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        upstream = UpstreamRequest(request.sampling, request.messages, request.prompt, request.response_format)
        call = build_call(self.config, upstream, stream=self.streams)
        if call.stream is None:
            response = await self._send(call, stream=False)
            try:
                text, finish, usage = parse_answer(self.config.provider, response.json())
            except (ValueError, KeyError, TypeError) as error:
                raise Unavailable(f"Upstream answer could not be read: {error}", reason="UPSTREAM_ERROR") from error
            yield Chunk(text=text)
            yield Chunk(text="", finish_reason=finish, usage=usage)
            return
        response = await self._send(call, stream=True)
        state = StreamState()
        try:
            async for data in read_events(response, call.stream):
                try:
                    text = parse_stream_event(self.config.provider, data, state)
                except UpstreamStreamError as error:
                    raise Unavailable(f"Upstream error: {self._redact(str(error))}", reason="UPSTREAM_ERROR") from error
                except (ValueError, KeyError, TypeError) as error:
                    raise Unavailable(f"Upstream stream could not be read: {error}", reason="UPSTREAM_ERROR") from error
                if text:
                    yield Chunk(text=text)
                if state.done:
                    break
        except httpx.ReadTimeout as error:
            raise DeadlineExceeded(f"Upstream {self.config.provider.value} stopped answering.") from error
        finally:
            await response.aclose()  # also how a cancelled request stops the upstream generation
        yield state.last_chunk()

    async def _send(self, call: HttpCall, stream: bool) -> httpx.Response:
        """POST with retries on connection errors (nothing was sent yet, so retrying is safe)."""
        path = call.path or self.config.url  # an empty path: the URL exactly as configured
        if path.startswith("/v1/") and self.config.url.endswith("/v1"):
            path = path.removeprefix("/v1")  # a base URL given as https://host/v1
        for attempt in range(self.config.retries + 1):
            try:
                request = self._client.build_request("POST", path, json=call.body)
                response = await self._client.send(request, stream=stream)
                break
            except _RETRYABLE as error:
                if attempt == self.config.retries:
                    raise Unavailable(
                        f"Upstream {self.config.provider.value} unreachable: {type(error).__name__}",
                        reason="UPSTREAM_UNAVAILABLE",
                    ) from error
                await asyncio.sleep(0.2 * 2**attempt)  # backoff between connection attempts
            except httpx.TimeoutException as error:
                raise DeadlineExceeded(f"Upstream {self.config.provider.value} timed out.") from error
        if response.status_code >= 300:  # redirects are not followed: they are errors here
            body = (await response.aread()).decode("utf-8", errors="replace")
            await response.aclose()
            raise self.upstream_error(response, body)
        return response

    def upstream_error(self, response: httpx.Response, body: str) -> MeshError:
        """An upstream error status as the mesh's error, with the token redacted."""
        try:
            payload = json.loads(body)
            detail = payload.get("error", payload)
            message = detail.get("message", body) if isinstance(detail, dict) else str(detail)
        except (ValueError, AttributeError):
            message = body
        message = self._redact(str(message))[:500]
        status = response.status_code
        text = f"Upstream {self.config.provider.value} answered {status}: {message}"
        if status in (400, 404, 413, 422):
            return InvalidArgument(text, reason="UPSTREAM_REJECTED")
        if status == 429:
            retry = response.headers.get("retry-after", "")
            return ResourceExhausted(
                text, reason="UPSTREAM_RATE_LIMITED", retry_after_seconds=int(retry) if retry.isdigit() else None
            )
        if status in (401, 403):
            return Unavailable(text, reason="UPSTREAM_AUTH_FAILED")
        return Unavailable(text, reason="UPSTREAM_ERROR")

    def _redact(self, text: str) -> str:
        token = self.config.auth_token.get_secret_value() if self.config.auth_token else ""
        return text.replace(token, "***") if token else text
