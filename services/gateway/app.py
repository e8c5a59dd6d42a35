"""The gateway app: OpenAI-compatible HTTP over the mesh's gRPC services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.common.files import FileStore
from services.common.grpc_client import open_channel
from services.common.postgres import open_pool
from services.embeddings.client import EmbeddingsClient
from services.fleet.client import FleetClient
from services.gateway.analytics import MetricsHistory
from services.gateway.api_keys import ApiKeyStore
from services.gateway.auth import Authenticator
from services.gateway.body_limit import BodySizeLimitMiddleware
from services.gateway.config import GatewaySettings
from services.gateway.drain import Drain
from services.gateway.errors import install_error_handlers
from services.gateway.request_context import RequestContextMiddleware, RequestStats
from services.gateway.response_store import ResponseStore
from services.gateway.routers import (
    admin,
    batches,
    chat,
    completions,
    console,
    embeddings,
    files,
    health,
    jobs,
    keys,
    messages,
    models,
    nodes,
    pipeline,
    processes,
    responses,
    training,
)
from services.scheduler.client import SchedulerClient
from services.trainer.client import TrainerClient

log = logging.getLogger(__name__)


def build_app(settings: GatewaySettings) -> FastAPI:
    internal_token = settings.required_internal_token()
    settings.check_exposure()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Channels connect lazily and reconnect on their own: the gateway starts even if
        # inference is not up yet, and /health says so.
        channels = [
            open_channel(target, internal_token)
            for target in (
                settings.inference_target,
                settings.embeddings_target,
                settings.scheduler_target,
                settings.trainer_target,
            )
        ]
        app.state.inference = FleetClient(
            channels[0],
            settings.request_timeout_seconds,
            settings.fleet,
            internal_token=internal_token,
            home_address=settings.inference_target,
        )
        app.state.inference.start()
        app.state.embeddings = EmbeddingsClient(channels[1], timeout=settings.request_timeout_seconds)
        app.state.scheduler = SchedulerClient(channels[2], timeout=settings.request_timeout_seconds)
        app.state.trainer = TrainerClient(channels[3], timeout=settings.request_timeout_seconds)
        app.state.files = FileStore(settings.files)
        pool, keys = None, None
        if settings.database_url and settings.api_key_secret:
            pool = await open_pool(settings.database_url)
            keys = ApiKeyStore(pool, settings.api_key_secret.get_secret_value().encode())
            await keys.migrate()
        if pool is not None:
            app.state.responses = ResponseStore(pool, settings.response_retention_seconds)
            await app.state.responses.migrate()
        if settings.allow_anonymous:
            log.warning(
                "API keys are OFF (local development): anyone who can reach %s:%s may use the app endpoints. "
                "Admin endpoints still need a superuser JWT.",
                settings.host,
                settings.port,
            )
        app.state.authenticator = Authenticator(settings, keys, app.state.history)
        app.state.drain.attach(asyncio.get_running_loop())
        try:
            yield
        finally:
            await app.state.inference.close()
            for channel in channels:
                await channel.close()
            if pool is not None:
                await pool.close()

    app = FastAPI(title="LLM Mesh gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.responses = None  # a ResponseStore where PostgreSQL is configured
    app.state.drain = Drain(settings.shutdown_grace_seconds)
    # An upload may be as large as a file may be, plus the multipart framing.
    uploads = {"/v1/files": settings.files.max_bytes + 64 * 1024}
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, path_limits=uploads)
    app.state.request_stats = RequestStats()
    app.state.history = MetricsHistory()
    app.add_middleware(RequestContextMiddleware, stats=app.state.request_stats, history=app.state.history)

    install_error_handlers(app)
    for module in (
        batches,
        chat,
        completions,
        messages,
        responses,
        embeddings,
        files,
        models,
        nodes,
        jobs,
        training,
        pipeline,
        admin,
        processes,
        keys,
        health,
        console,
    ):
        app.include_router(module.router)
    return app
