"""The gateway app: OpenAI-compatible HTTP over the mesh's gRPC services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.grpc_client import open_channel
from services.gateway.body_limit import BodySizeLimitMiddleware
from services.gateway.config import GatewaySettings
from services.gateway.errors import install_error_handlers
from services.gateway.routers import admin, chat, completions, embeddings, health, jobs, models
from services.gateway.upstream import EmbeddingsClient, InferenceClient, SchedulerClient


def build_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Channels connect lazily and reconnect on their own: the gateway starts even if
        # inference is not up yet, and /health says so.
        channels = [
            open_channel(target)
            for target in (settings.inference_target, settings.embeddings_target, settings.scheduler_target)
        ]
        app.state.inference = InferenceClient(channels[0], timeout=settings.request_timeout_seconds)
        app.state.embeddings = EmbeddingsClient(channels[1], timeout=settings.request_timeout_seconds)
        app.state.scheduler = SchedulerClient(channels[2], timeout=settings.request_timeout_seconds)
        try:
            yield
        finally:
            for channel in channels:
                await channel.close()

    app = FastAPI(title="LLM Mesh gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    for module in (chat, completions, embeddings, models, jobs, admin, health):
        app.include_router(module.router)
    return app
