"""SIGTERM for the gateway: stop taking work, let open streams run, and end the ones still
open just before the grace period with an error event and `[DONE]`.

uvicorn alone would cancel them at the end of its grace, so a client saw a stream cut off
mid-answer, with no error and no `[DONE]`. `GatewayServer` tells the app's `Drain` when the
signal arrives; /health answers 503 from then on, so load balancers stop sending.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn


class Drain:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.draining = False
        self.closing = asyncio.Event()  # set when open streams must end now
        self._streams: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def begin(self) -> None:
        """Called from the signal handler: everything else happens on the event loop."""
        if self._loop is not None and not self.draining:
            self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.draining = True
        # A margin before uvicorn's own deadline, so that the last events reach the clients.
        margin = min(1.0, self.grace_seconds / 2)
        asyncio.get_running_loop().call_later(max(self.grace_seconds - margin, 0.0), self._close_streams)

    def _close_streams(self) -> None:
        self.closing.set()
        for task in list(self._streams):
            task.cancel()  # the stream response turns this into its last events (services/gateway/sse.py)

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """Register the current task as an open stream for as long as the block runs."""
        task = asyncio.current_task()
        assert task is not None
        if self.closing.is_set():
            task.cancel()
        self._streams.add(task)
        try:
            yield
        finally:
            self._streams.discard(task)


class GatewayServer(uvicorn.Server):
    """uvicorn's server, telling the app's Drain when SIGTERM or SIGINT arrives."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.drain.begin()
        super().handle_exit(sig, frame)
