"""Micro-batching merges concurrent requests (observed through its counters, never through timing)."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.embeddings import batcher as batcher_module
from services.embeddings.batcher import MicroBatcher


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def doubling(calls: list[list[int]], started: threading.Event | None = None, gate: threading.Event | None = None):
    def process(items: list[int]) -> list[int]:
        if started and gate:
            started.set()
            gate.wait(10)
        calls.append(list(items))
        return [item * 2 for item in items]

    return process


async def test_concurrent_requests_share_one_call(executor) -> None:
    calls: list[list[int]] = []
    batcher = MicroBatcher(doubling(calls), executor=executor, window_seconds=1.0, max_batch=6)
    # 3 requests of 2 items fill the batch, so the window ends at once.
    results = await asyncio.gather(*(batcher.submit([i, i + 10]) for i in range(3)))
    assert results == [[0, 20], [2, 22], [4, 24]]
    assert calls == [[0, 10, 1, 11, 2, 12]]
    assert (batcher.stats.batches, batcher.stats.items, batcher.stats.largest_batch) == (1, 6, 6)
    await batcher.close()


async def test_requests_queued_during_a_batch_form_the_next_one(executor) -> None:
    calls: list[list[int]] = []
    started, gate = threading.Event(), threading.Event()
    batcher = MicroBatcher(doubling(calls, started, gate), executor=executor, window_seconds=0.0, max_batch=100)
    first = asyncio.ensure_future(batcher.submit([1]))
    assert await asyncio.to_thread(started.wait, 10)  # the first batch is running and held
    rest = [asyncio.ensure_future(batcher.submit([n])) for n in (2, 3, 4)]
    await asyncio.sleep(0)  # let them queue
    gate.set()
    assert await first == [2]
    assert [await r for r in rest] == [[4], [6], [8]]
    assert calls == [[1], [2, 3, 4]]
    await batcher.close()


async def test_clients_in_flight_settle_into_one_batch_not_two_halves(executor) -> None:
    """A batch ran with one request while seven queued: eight were in flight, so the next batch
    waits for the first client's next request instead of running seven and then one."""
    calls: list[list[int]] = []
    started, gate = threading.Event(), threading.Event()
    batcher = MicroBatcher(doubling(calls, started, gate), executor=executor, window_seconds=5.0, max_batch=100)

    async def client(first: int) -> None:
        await batcher.submit([first])
        await batcher.submit([first + 100])  # its next request, once answered

    lead = asyncio.ensure_future(client(0))
    assert await asyncio.to_thread(started.wait, 10)  # the first batch (one request) is running, held
    others = [asyncio.ensure_future(batcher.submit([n])) for n in range(1, 8)]
    await asyncio.sleep(0)  # they queue behind it
    gate.set()
    await asyncio.gather(lead, *others)
    assert calls == [[0], [1, 2, 3, 4, 5, 6, 7, 100]]
    await batcher.close()


async def test_max_batch_splits_between_requests_never_inside_one(executor) -> None:
    calls: list[list[int]] = []
    batcher = MicroBatcher(doubling(calls), executor=executor, window_seconds=1.0, max_batch=3)
    results = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4]), batcher.submit([5, 6, 7, 8]))
    assert results == [[2, 4], [6, 8], [10, 12, 14, 16]]
    assert calls == [[1, 2], [3, 4], [5, 6, 7, 8]]
    await batcher.close()


async def test_errors_reach_every_caller_in_the_batch(executor) -> None:
    def failing(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = MicroBatcher(failing, executor=executor, window_seconds=1.0, max_batch=2)
    results = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    await batcher.close()


async def test_the_wait_for_expected_clients_scales_with_the_last_call(executor, monkeypatch) -> None:
    """With no window of its own, the batcher still waits up to half the last call's time (held
    here for a second) for the client it just answered, who comes back 20 ms later: clients come
    back through the gateway, slowed by the model's threads, and a fixed 5 ms window split 8
    clients over HTTP into batches of 3 and 5."""
    monkeypatch.setattr(batcher_module, "CATCH_UP_SECONDS", 10.0)  # the 50 ms cap, raised for a slow machine
    calls: list[list[int]] = []
    started, gate = threading.Event(), threading.Event()
    batcher = MicroBatcher(doubling(calls, started, gate), executor=executor, window_seconds=0.0, max_batch=100)

    async def client(first: int) -> None:
        await batcher.submit([first])
        await asyncio.sleep(0.02)  # its way back through the gateway
        await batcher.submit([first + 100])

    lead = asyncio.ensure_future(client(0))
    assert await asyncio.to_thread(started.wait, 10)
    others = [asyncio.ensure_future(batcher.submit([n])) for n in range(1, 8)]
    await asyncio.sleep(1.0)  # the first call lasts at least this long
    gate.set()
    await asyncio.gather(lead, *others)
    assert calls == [[0], [1, 2, 3, 4, 5, 6, 7, 100]]
    await batcher.close()
