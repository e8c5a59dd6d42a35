"""For backends whose library blocks: one worker thread per model, bridged to the event loop.

Generations run on the thread one at a time and hand chunks back through an
asyncio queue. Each has a cancel flag that the work checks before every token;
closing the stream (the client went away) or `abort` sets it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from services.inference.api import Chunk
from services.inference.backends.base import Backend

T = TypeVar("T")
Emit = Callable[[Chunk], None]
Work = Callable[[threading.Event, Emit], None]

_END = object()


class ThreadedBackend(Backend):
    def _start_worker(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.spec.backend}-{self.spec.name}")
        self._cancel_flags: dict[str, threading.Event] = {}

    async def _on_worker(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (load, adapter swap) on the model's thread, in turn with generations."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _stop_worker(self) -> None:
        for flag in self._cancel_flags.values():
            flag.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def abort(self, request_id: str) -> None:
        if flag := self._cancel_flags.get(request_id):
            flag.set()

    async def _stream_from_worker(self, request_id: str, work: Work) -> AsyncIterator[Chunk]:
        """Run `work(cancel, emit)` on the model's thread and yield what it emits."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        self._cancel_flags[request_id] = cancel

        def emit(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                if not cancel.is_set():  # the client may have left while this waited for the thread
                    work(cancel, emit)
            except BaseException as error:  # noqa: BLE001 - re-raised on the event loop
                emit(error)
            finally:
                emit(_END)

        worker = loop.run_in_executor(self._executor, run)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
            await worker
        finally:
            # Reached on normal end, on error, and when the consumer closes the stream early.
            cancel.set()
            self._cancel_flags.pop(request_id, None)
