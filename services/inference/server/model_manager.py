"""Loads models on demand within a budget, and decides who runs when memory is short.

Rules:
- A model loads on first use. Requests for a model that is loading, or that must
  wait for memory, queue; past `max_waiting` they get RESOURCE_EXHAUSTED.
- The budget (`max_loaded_models`, `memory_limit_mb`; `single_model` means one
  at a time) is kept by unloading the least recently used *idle* model. A model
  with requests running is never unloaded: loads wait for it to drain.
- Requests for a loaded model go straight in, so same-model requests group
  together instead of swapping back and forth, until a request for another
  model has waited `max_wait_seconds`: then the loaded model takes no new
  requests, drains, and is swapped out. Models load in the order their first
  waiter arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.common.errors import MeshError, ResourceExhausted, Unavailable
from services.common.registry import ModelSpec
from services.inference.api import ModelState, QueueLine, WaitState, WaitUpdate
from services.inference.backends import create_backend
from services.inference.backends.base import Backend
from services.inference.metrics import MODEL_LOAD_TIME, MODELS_LOADED

log = logging.getLogger(__name__)

InstanceKey = tuple[str, str, str]
StateListener = Callable[[str, ModelState], Awaitable[None]]


@dataclass(frozen=True)
class Budget:
    max_loaded_models: int | None = None
    memory_limit_mb: int | None = None
    single_model: bool = False
    max_waiting: int = 256
    max_queued_per_model: int = 32
    max_wait_seconds: float = 30.0
    retry_after_seconds: int = 5

    @property
    def model_limit(self) -> int | None:
        return 1 if self.single_model else self.max_loaded_models


WaitListener = Callable[[WaitUpdate], None]


@dataclass
class _Instance:
    key: InstanceKey
    spec: ModelSpec
    state: ModelState = ModelState.UNLOADED
    backend: Backend | None = None
    running: int = 0
    last_used: float = 0.0
    draining: bool = False  # an unload waits for the running requests


@dataclass
class _Waiter:
    key: InstanceKey
    since: float
    reported: WaitUpdate | None = field(default=None)


class Lease:
    """The right to generate on a loaded model; release it when the generation ends."""

    def __init__(self, manager: ModelManager, instance: _Instance) -> None:
        assert instance.backend is not None
        self.backend: Backend = instance.backend
        self._manager = manager
        self._instance: _Instance | None = instance

    def release(self) -> None:
        if self._instance is not None:
            self._manager._release(self._instance)
            self._instance = None


class ModelManager:
    def __init__(
        self,
        budget: Budget | None = None,
        backend_factory: Callable[[ModelSpec], Backend] = create_backend,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.budget = budget or Budget()
        self._backend_factory = backend_factory
        self._on_state_change = on_state_change
        self._instances: dict[InstanceKey, _Instance] = {}
        self._waiters: list[_Waiter] = []
        self._changed = asyncio.Condition()
        self.last_activity = 0.0  # loop time of the last admission or release; 0: none yet

    # ---- views ----

    def _instance(self, spec: ModelSpec) -> _Instance:
        return self._instances.setdefault(spec.instance_key, _Instance(spec.instance_key, spec))

    def state(self, spec: ModelSpec) -> ModelState:
        return self._instance(spec).state

    def running(self, spec: ModelSpec) -> int:
        return self._instance(spec).running

    def backend(self, spec: ModelSpec) -> Backend | None:
        return self._instance(spec).backend

    def queue(self, specs: list[ModelSpec]) -> list[QueueLine]:
        return [
            QueueLine(
                model=spec.name,
                state=self._instance(spec).state,
                running=self._instance(spec).running,
                waiting=sum(1 for w in self._waiters if w.key == spec.instance_key),
            )
            for spec in specs
        ]

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> bool:
        """Whether any request runs or waits."""
        return bool(self._waiters) or any(i.running for i in self._instances.values())

    # ---- acquiring ----

    async def acquire(self, spec: ModelSpec, on_wait: WaitListener | None = None) -> Lease:
        """Wait until `spec`'s model is loaded and it is this request's turn."""
        instance = self._instance(spec)
        loop = asyncio.get_running_loop()
        async with self._changed:
            if self._can_admit(instance, arrived=loop.time()):
                self._check_model_queue(instance)
                return self._admit(instance)
            if len(self._waiters) >= self.budget.max_waiting:
                raise ResourceExhausted(
                    f"{len(self._waiters)} requests are already waiting for models; retry later.",
                    reason="QUEUE_FULL",
                    retry_after_seconds=self.budget.retry_after_seconds,
                )
            waiter = _Waiter(instance.key, loop.time())
            self._waiters.append(waiter)
        try:
            while True:
                async with self._changed:
                    if self._can_admit(instance, arrived=waiter.since):
                        self._waiters.remove(waiter)
                        self._check_model_queue(instance)
                        return self._admit(instance)
                    victims = self._load_plan(instance, waiter)
                    if victims is None:
                        self._report(waiter, instance, on_wait)
                        await self._changed.wait()
                        continue
                    instance.state = ModelState.LOADING
                    for victim in victims:
                        victim.state, victim.draining = ModelState.UNLOADED, False
                    self._report(waiter, instance, on_wait)
                await self._swap(instance, victims)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._wake()

    def _check_model_queue(self, instance: _Instance) -> None:
        """A loaded model takes its parallel slots plus a bounded queue; past that, 429."""
        parallel = instance.backend.parallel_slots if instance.backend is not None else 1
        limit = parallel + self.budget.max_queued_per_model
        if instance.running >= limit:
            raise ResourceExhausted(
                f"Model '{instance.spec.name}' has {instance.running} requests running or queued; retry later.",
                reason="MODEL_QUEUE_FULL",
                retry_after_seconds=1,
            )

    def _admit(self, instance: _Instance) -> Lease:
        instance.running += 1
        instance.last_used = self.last_activity = asyncio.get_running_loop().time()
        return Lease(self, instance)

    def _release(self, instance: _Instance) -> None:
        instance.running -= 1
        instance.last_used = self.last_activity = asyncio.get_running_loop().time()
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _can_admit(self, instance: _Instance, arrived: float) -> bool:
        return (
            instance.state is ModelState.LOADED
            and not instance.draining
            and not self._starving_before(instance, arrived)
        )

    def _starving_before(self, instance: _Instance, arrived: float) -> bool:
        """A request for another model, older than `arrived`, has waited too long and cannot
        load while `instance` stays: newer requests must not keep `instance` busy."""
        now = asyncio.get_running_loop().time()
        for waiter in self._waiters:
            other = self._instances[waiter.key]
            if other is instance or waiter.since >= arrived or now - waiter.since < self.budget.max_wait_seconds:
                continue
            if other.state is not ModelState.LOADED and not self._fits(other.spec, evictable=[]):
                return True
        return False

    def _load_plan(self, instance: _Instance, waiter: _Waiter) -> list[_Instance] | None:
        """Idle models to unload so that this waiter can load its model now, or None to wait."""
        if instance.state not in (ModelState.UNLOADED, ModelState.FAILED):
            return None
        needing_load = [
            w for w in self._waiters if self._instances[w.key].state in (ModelState.UNLOADED, ModelState.FAILED)
        ]
        constrained = self.budget.model_limit is not None or self.budget.memory_limit_mb is not None
        if constrained and needing_load[0] is not waiter:
            return None  # swaps happen in arrival order
        if not constrained and next(w for w in needing_load if w.key == waiter.key) is not waiter:
            return None
        if self.budget.single_model and any(i.state is ModelState.LOADING for i in self._instances.values()):
            return None
        idle = sorted(
            (
                i
                for i in self._instances.values()
                if i.state is ModelState.LOADED and i.running == 0 and i is not instance
            ),
            key=lambda i: i.last_used,
        )
        victims: list[_Instance] = []
        while not self._fits(instance.spec, evictable=victims):
            if not idle:
                return None  # wait for a running model to drain
            victims.append(idle.pop(0))
        return victims

    def _fits(self, spec: ModelSpec, evictable: list[_Instance]) -> bool:
        resident = [
            i
            for i in self._instances.values()
            if i.state in (ModelState.LOADED, ModelState.LOADING) and i not in evictable and i.key != spec.instance_key
        ]
        limit = self.budget.model_limit
        if limit is not None and len(resident) + 1 > limit:
            return False
        memory = self.budget.memory_limit_mb
        return memory is None or sum(i.spec.memory_mb for i in resident) + spec.memory_mb <= memory

    def _report(self, waiter: _Waiter, instance: _Instance, on_wait: WaitListener | None) -> None:
        if on_wait is None:
            return
        if instance.state is ModelState.LOADING:
            update = WaitUpdate(WaitState.LOADING_MODEL, instance.spec.name)
        else:
            update = WaitUpdate(WaitState.QUEUED, instance.spec.name, self._waiters.index(waiter) + 1)
        if update != waiter.reported:
            waiter.reported = update
            on_wait(update)

    async def _swap(self, instance: _Instance, victims: list[_Instance]) -> None:
        """Unload the victims, then load `instance` (outside the lock: loads take seconds)."""
        started = time.perf_counter()
        for victim in victims:
            await self._unload_backend(victim)
        await self._publish(instance, ModelState.LOADING)
        backend = self._backend_factory(instance.spec)
        try:
            await backend.load()
        except Exception as error:
            async with self._changed:
                instance.state = ModelState.FAILED
                self._changed.notify_all()
            await self._publish(instance, ModelState.FAILED)
            if isinstance(error, MeshError):
                raise
            log.exception("loading model '%s' failed", instance.spec.name)
            raise Unavailable(
                f"Model '{instance.spec.name}' failed to load: {error}", reason="MODEL_LOAD_FAILED"
            ) from error
        async with self._changed:
            instance.backend, instance.state = backend, ModelState.LOADED
            instance.last_used = asyncio.get_running_loop().time()
            self._changed.notify_all()
        await self._publish(instance, ModelState.LOADED)
        MODEL_LOAD_TIME.labels(instance.spec.name, instance.spec.backend).observe(time.perf_counter() - started)
        MODELS_LOADED.inc()
        log.info("model '%s' loaded", instance.spec.name)

    async def _unload_backend(self, instance: _Instance) -> None:
        backend, instance.backend = instance.backend, None
        if backend is not None:
            await backend.unload()
            MODELS_LOADED.dec()
            log.info("model '%s' unloaded", instance.spec.name)
        await self._publish(instance, ModelState.UNLOADED)

    async def _publish(self, instance: _Instance, state: ModelState) -> None:
        if self._on_state_change:
            await self._on_state_change(instance.spec.name, state)

    # ---- hot swap ----

    async def load(self, spec: ModelSpec) -> None:
        lease = await self.acquire(spec)
        lease.release()

    async def unload(self, spec: ModelSpec) -> bool:
        """Unload once running requests finish; new ones wait meanwhile. False if it was not loaded."""
        instance = self._instance(spec)
        async with self._changed:
            if instance.state is not ModelState.LOADED or instance.draining:
                return False
            instance.draining = True
            await self._changed.wait_for(lambda: instance.running == 0)
        # Still LOADED and draining while the memory is freed: nobody is admitted or loads over it.
        await self._unload_backend(instance)
        async with self._changed:
            instance.state, instance.draining = ModelState.UNLOADED, False
            self._changed.notify_all()
        return True

    async def unload_expired(self) -> list[str]:
        """Unload the models idle for longer than their `ttl_seconds`; their names."""
        now = asyncio.get_running_loop().time()
        wanted = {waiter.key for waiter in self._waiters}
        expired = [
            i
            for i in self._instances.values()
            if i.spec.ttl_seconds is not None
            and i.state is ModelState.LOADED
            and not i.draining
            and i.running == 0
            and i.key not in wanted
            and now - i.last_used >= i.spec.ttl_seconds
        ]
        unloaded = await asyncio.gather(*(self.unload(i.spec) for i in expired))
        names = [i.spec.name for i, done in zip(expired, unloaded, strict=True) if done]
        for name in names:
            log.info("model '%s' was idle past its ttl_seconds: unloaded", name)
        return names

    async def unload_all(self) -> list[str]:
        instances = [i for i in self._instances.values() if i.state is ModelState.LOADED]
        unloaded = await asyncio.gather(*(self.unload(i.spec) for i in instances))
        return [i.spec.name for i, done in zip(instances, unloaded, strict=True) if done]

    async def unload_unreferenced(self, keep: set[InstanceKey]) -> list[str]:
        """Unload loaded models that no name reaches any more (after a reload)."""
        stale = [i for i in self._instances.values() if i.key not in keep and i.state is ModelState.LOADED]
        unloaded = await asyncio.gather(*(self.unload(i.spec) for i in stale))
        for instance in stale:
            self._instances.pop(instance.key, None)
        return [i.spec.name for i, done in zip(stale, unloaded, strict=True) if done]
