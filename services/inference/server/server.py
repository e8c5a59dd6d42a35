"""Assembles the inference service: registry, settings store, router, model manager, engine, gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from llmmesh.inference.v1 import inference_service_pb2_grpc as pb_grpc
from services.common.artifacts import ArtifactSettings, ArtifactStore
from services.common.exit_codes import IDLE_SHUTDOWN_EXIT_CODE
from services.common.grpc_server import GrpcService, start_grpc_server
from services.common.registry import ModelRegistry
from services.inference.api import ModelState
from services.inference.backends import check_options
from services.inference.config import InferenceSettings
from services.inference.server.adapters import AdapterStore
from services.inference.server.engine import InferenceEngine
from services.inference.server.model_manager import ModelManager
from services.inference.server.response_cache import ResponseCache
from services.inference.server.servicer import SERVICE_NAME, InferenceServicer
from services.inference.server.settings_store import MemorySettingsStore, PostgresSettingsStore, SettingsStore
from services.inference.server.slots import ModelRouter, RoutingEnvironment

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 1.0


def model_health_name(model: str) -> str:
    """The grpc.health.v1 service name that reports one model's readiness."""
    return f"model/{model}"


class InferenceServer(GrpcService[InferenceSettings]):
    """The running service. Overall health is SERVING once preloading is done; each model
    also has its own health entry (`model/<name>`), SERVING while it is loaded."""

    def __init__(
        self,
        settings: InferenceSettings,
        registry: ModelRegistry | None = None,
        environment: RoutingEnvironment | None = None,
        artifacts: ArtifactSettings | None = None,
    ) -> None:
        self.settings = settings
        self.artifacts = artifacts or ArtifactSettings()
        self.registry = registry or ModelRegistry.from_yaml(settings.models_file)
        check_options(self.registry)  # a mistyped option stops startup, not a model's first load
        self.environment = environment or RoutingEnvironment()
        self.models = ModelManager(settings.budget, on_state_change=self._publish_model_state)
        self.engine: InferenceEngine | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve, then preload. Until preloading is done, overall health is NOT_SERVING (a
        readiness probe holds traffic back) while the port already answers (liveness)."""
        self.serve_metrics()
        store = await self._open_store()
        responses = ResponseCache(
            self.settings.response_cache_max_entries,
            self.settings.response_cache_ttl_seconds,
            self.settings.data_dir / "response-cache" if self.settings.response_cache_persist else None,
        )
        adapters = AdapterStore(
            ArtifactStore(self.artifacts.dir or self.settings.data_dir / "adapters", self.artifacts)
        )
        self.engine = InferenceEngine(
            ModelRouter(self.registry), self.models, store, self.environment, responses, adapters
        )
        await self.engine.reload()
        preload = {spec.instance_key: spec for spec in map(self.engine.router.resolve, self._preload_names())}
        servicer = InferenceServicer(self.engine)
        self._grpc = await start_grpc_server(
            host=self.settings.host,
            port=self.settings.port,
            register=lambda server: pb_grpc.add_InferenceServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            internal_token=self.settings.required_internal_token(),
            max_message_bytes=self.settings.max_message_bytes,
            serving=not preload,
        )
        for spec in self.engine.router.specs():
            await self._publish_model_state(spec.name, self.models.state(spec))
        if preload:
            await asyncio.gather(*(self.models.load(spec) for spec in preload.values()))
            await self._grpc.set_serving(("", SERVICE_NAME), True)
        self._housekeeping = asyncio.create_task(self._keep_house())

    async def _keep_house(self) -> None:
        """Each second: unload models idle past their TTL, and end the process once the whole
        service has been idle for idle_shutdown_seconds. One failed round is logged, not fatal."""
        started = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.models.unload_expired()
                idle_limit = self.settings.idle_shutdown_seconds
                last = self.models.last_activity or started
                if idle_limit and not self.models.busy and asyncio.get_running_loop().time() - last >= idle_limit:
                    log.warning("no requests for %.0f s (idle_shutdown_seconds): shutting down", idle_limit)
                    self.exit_code = IDLE_SHUTDOWN_EXIT_CODE  # the launcher stops the mesh, not restarts it
                    os.kill(os.getpid(), signal.SIGTERM)  # the same graceful path as an operator's SIGTERM
                    return
            except Exception:
                log.exception("housekeeping round failed")

    async def _open_store(self) -> SettingsStore:
        if self.settings.database_url:
            return await PostgresSettingsStore.open(self.settings.database_url)
        log.warning("no database configured: settings are kept in memory until the service stops")
        return MemorySettingsStore()

    def _preload_names(self) -> list[str]:
        default = [""] if self.settings.preload_default_model else []
        return default + self.settings.preload_models

    async def release(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self.models.unload_all()
        if self.engine:
            await self.engine.store.close()

    async def _publish_model_state(self, name: str, state: ModelState) -> None:
        if self._grpc:
            await self._grpc.set_serving([model_health_name(name)], state is ModelState.LOADED)
