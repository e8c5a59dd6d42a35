"""The model manager's choreography on mock backends: budget, eviction, queueing, swaps.

Ordering is asserted through events the backends record, never through timing.
"""

import asyncio

import pytest

from services.common.errors import ResourceExhausted
from services.common.registry import ModelSpec
from services.inference.api import ModelState, WaitState, WaitUpdate
from services.inference.backends.mock import MockBackend
from services.inference.server.model_manager import Budget, ModelManager

A, B, C = (ModelSpec(name=n, backend="mock", memory_mb=100) for n in "ABC")


class Recorder:
    """Backend factory that records loads and unloads."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.created = 0

    def __call__(self, spec: ModelSpec) -> MockBackend:
        recorder = self
        self.created += 1

        class Recorded(MockBackend):
            async def load(self) -> None:
                recorder.events.append(f"load {spec.name}")
                await super().load()

            async def unload(self) -> None:
                recorder.events.append(f"unload {spec.name}")

        return Recorded(spec)


async def use(manager: ModelManager, spec: ModelSpec, log: list[str] | None = None, hold: asyncio.Event | None = None):
    lease = await manager.acquire(spec)
    try:
        if log is not None:
            log.append(spec.name)
        if hold is not None:
            await hold.wait()
    finally:
        lease.release()


async def settle() -> None:
    """Let every ready task run until none is left (no wall-clock waiting)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_lazy_load_and_shared_instance() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(), backend_factory=recorder)
    alias_of_a = ModelSpec(name="A-too", backend="mock", path="A")  # same (backend, path) as A
    assert manager.state(A) is ModelState.UNLOADED
    await use(manager, A)
    await use(manager, alias_of_a)
    assert recorder.created == 1
    assert manager.state(A) is ModelState.LOADED


async def test_lru_eviction_never_evicts_a_busy_model() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(max_loaded_models=2), backend_factory=recorder)
    hold_a = asyncio.Event()
    busy_a = asyncio.ensure_future(use(manager, A, hold=hold_a))  # A loads first: least recently used
    await settle()
    await use(manager, B)
    await use(manager, C)  # must evict: A is older but busy, so B goes
    assert recorder.events == ["load A", "load B", "unload B", "load C"]
    assert manager.state(A) is ModelState.LOADED

    hold_c = asyncio.Event()
    busy_c = asyncio.ensure_future(use(manager, C, hold=hold_c))
    await settle()
    waiting_b = asyncio.ensure_future(use(manager, B))  # both resident models busy: B must wait
    await settle()
    assert not waiting_b.done() and manager.waiting == 1
    hold_a.set()
    await busy_a
    await waiting_b
    assert recorder.events[-2:] == ["unload A", "load B"]
    hold_c.set()
    await busy_c


async def test_single_model_groups_requests_by_model_and_aborts_nothing() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(single_model=True), backend_factory=recorder)
    order: list[str] = []
    hold = asyncio.Event()
    first = asyncio.ensure_future(use(manager, A, order, hold))
    await settle()
    arrivals = [asyncio.ensure_future(use(manager, spec, order)) for spec in (B, A, B, A)]
    await settle()
    hold.set()
    await asyncio.gather(first, *arrivals)  # every request completes; none was aborted
    # The A requests join the loaded A before the swap; the B requests then run together.
    assert order == ["A", "A", "A", "B", "B"]
    assert recorder.events == ["load A", "unload A", "load B"]


async def test_a_starving_model_stops_others_from_joining() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(single_model=True, max_wait_seconds=0.0), backend_factory=recorder)
    order: list[str] = []
    hold = asyncio.Event()
    first = asyncio.ensure_future(use(manager, A, order, hold))
    await settle()
    waiting_b = asyncio.ensure_future(use(manager, B, order))
    await settle()
    late_a = asyncio.ensure_future(use(manager, A, order))  # B has waited past the bound: A takes no more
    await settle()
    assert order == ["A"] and not late_a.done()
    hold.set()
    await asyncio.gather(first, waiting_b, late_a)
    assert order == ["A", "B", "A"]


async def test_memory_budget() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(memory_limit_mb=250), backend_factory=recorder)
    for spec in (A, B, C):
        await use(manager, spec)
    assert recorder.events == ["load A", "load B", "unload A", "load C"]


async def test_queue_overflow_is_resource_exhausted_with_retry_after() -> None:
    manager = ModelManager(Budget(single_model=True, max_waiting=1, retry_after_seconds=7), backend_factory=Recorder())
    hold = asyncio.Event()
    busy = asyncio.ensure_future(use(manager, A, hold=hold))
    await settle()
    queued = asyncio.ensure_future(use(manager, B))
    await settle()
    with pytest.raises(ResourceExhausted) as raised:
        await manager.acquire(C)
    assert raised.value.retry_after_seconds == 7
    hold.set()
    await asyncio.gather(busy, queued)


async def test_waiters_hear_their_position_and_the_load() -> None:
    manager = ModelManager(Budget(single_model=True), backend_factory=Recorder())
    hold = asyncio.Event()
    busy = asyncio.ensure_future(use(manager, A, hold=hold))
    await settle()
    updates: list[WaitUpdate] = []

    async def acquire_b() -> None:
        lease = await manager.acquire(B, on_wait=updates.append)
        lease.release()

    waiting = asyncio.ensure_future(acquire_b())
    await settle()
    assert updates == [WaitUpdate(WaitState.QUEUED, "B", 1)]
    hold.set()
    await asyncio.gather(busy, waiting)
    assert updates[-1] == WaitUpdate(WaitState.LOADING_MODEL, "B")


async def test_unload_waits_for_running_requests() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(), backend_factory=recorder)
    hold = asyncio.Event()
    busy = asyncio.ensure_future(use(manager, A, hold=hold))
    await settle()
    unloading = asyncio.ensure_future(manager.unload(A))
    await settle()
    assert not unloading.done() and "unload A" not in recorder.events
    hold.set()
    await busy
    assert await unloading
    assert manager.state(A) is ModelState.UNLOADED
    await use(manager, A)  # the next request loads it again
    assert recorder.events == ["load A", "unload A", "load A"]


async def test_cancelled_waiter_leaves_the_queue() -> None:
    manager = ModelManager(Budget(single_model=True), backend_factory=Recorder())
    hold = asyncio.Event()
    busy = asyncio.ensure_future(use(manager, A, hold=hold))
    await settle()
    waiting = asyncio.ensure_future(use(manager, B))
    await settle()
    assert manager.waiting == 1
    waiting.cancel()
    await settle()
    assert manager.waiting == 0
    hold.set()
    await busy


async def test_a_loaded_models_queue_is_bounded() -> None:
    """Its parallel slots plus max_queued_per_model run or queue; the next request gets 429."""
    manager = ModelManager(Budget(max_queued_per_model=2), backend_factory=Recorder())
    parallel = ModelSpec(name="P", backend="mock", options={"n_parallel": 2})
    leases = [await manager.acquire(parallel) for _ in range(4)]
    with pytest.raises(ResourceExhausted) as raised:
        await manager.acquire(parallel)
    assert raised.value.reason == "MODEL_QUEUE_FULL" and raised.value.retry_after_seconds == 1
    leases.pop().release()
    leases.append(await manager.acquire(parallel))  # a freed place is taken again
    for lease in leases:
        lease.release()


async def test_ttl_unloads_only_idle_models_past_their_ttl() -> None:
    recorder = Recorder()
    manager = ModelManager(Budget(), backend_factory=recorder)
    short = ModelSpec(name="short", backend="mock", ttl_seconds=0.01)
    forever = ModelSpec(name="forever", backend="mock")
    hold = asyncio.Event()
    await use(manager, forever)
    busy = asyncio.create_task(use(manager, short, hold=hold))
    await settle()
    await asyncio.sleep(0.02)  # past the TTL, but a request is running on it
    assert await manager.unload_expired() == [] and manager.busy
    hold.set()
    await busy
    assert await manager.unload_expired() == []  # released just now: not idle for long enough
    await asyncio.sleep(0.02)
    assert await manager.unload_expired() == ["short"]
    assert manager.state(short) is ModelState.UNLOADED and manager.state(forever) is ModelState.LOADED
    await use(manager, short)  # the next request loads it again
    assert recorder.events.count("load short") == 2 and not manager.busy
