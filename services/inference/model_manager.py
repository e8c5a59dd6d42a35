"""Loads models on first use and keeps them loaded; reports each model's state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.common.errors import MeshError, Unavailable
from services.inference.backends import create_backend
from services.inference.backends.base import Backend
from services.inference.domain import ModelState
from services.inference.registry import ModelRegistry, ModelSpec

log = logging.getLogger(__name__)

StateListener = Callable[[str, ModelState], Awaitable[None]]


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        backend_factory: Callable[[ModelSpec], Backend] = create_backend,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.registry = registry
        self._backend_factory = backend_factory
        self._on_state_change = on_state_change
        self._backends: dict[str, Backend] = {}
        self._states: dict[str, ModelState] = {spec.name: ModelState.UNLOADED for spec in registry}
        self._locks: dict[str, asyncio.Lock] = {spec.name: asyncio.Lock() for spec in registry}

    def state(self, name: str) -> ModelState:
        return self._states[name]

    async def get(self, spec: ModelSpec) -> Backend:
        """The loaded backend for `spec`, loading it first if needed. Concurrent callers share one load."""
        if backend := self._backends.get(spec.name):
            return backend
        async with self._locks[spec.name]:
            if backend := self._backends.get(spec.name):
                return backend
            await self._set_state(spec.name, ModelState.LOADING)
            backend = self._backend_factory(spec)
            try:
                await backend.load()
            except MeshError:
                await self._set_state(spec.name, ModelState.FAILED)
                raise
            except Exception as error:
                await self._set_state(spec.name, ModelState.FAILED)
                log.exception("loading model '%s' failed", spec.name)
                raise Unavailable(f"Model '{spec.name}' failed to load: {error}", reason="MODEL_LOAD_FAILED") from error
            self._backends[spec.name] = backend
            await self._set_state(spec.name, ModelState.LOADED)
            return backend

    async def unload_all(self) -> None:
        for name, backend in list(self._backends.items()):
            async with self._locks[name]:
                del self._backends[name]
                await backend.unload()
                await self._set_state(name, ModelState.UNLOADED)

    async def _set_state(self, name: str, state: ModelState) -> None:
        self._states[name] = state
        if self._on_state_change:
            await self._on_state_change(name, state)
