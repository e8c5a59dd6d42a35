"""Heavy work (training, merging, converting) in a child process that reports JSON lines.

A crash or an out-of-memory kills the child, never the service. The child runs in
its own process group, so a kill also reaches whatever it started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]


class ChildFailed(Exception):
    pass


class Child:
    """`environment`: variables set for the child (None removes one), e.g. the Hub's offline mode."""

    def __init__(self, module: str, run_dir: Path, environment: dict[str, str | None] | None = None) -> None:
        self.module = module
        self.run_dir = run_dir
        self.environment = environment or {}
        self.process: asyncio.subprocess.Process | None = None
        self.killed = False

    async def run(self, on_event: Callable[[Event], Awaitable[None]]) -> None:
        """Run `python -m module run_dir` to the end, handing each event line to `on_event`.
        Other output is library chatter: stderr's last lines explain a failure."""
        # The child imports this code base the way this process does.
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        for name, value in self.environment.items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        self.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            str(self.run_dir),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            start_new_session=True,
        )
        if self.killed:  # killed while it was being started
            self.kill()
        stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        drain = asyncio.create_task(_collect_lines(process.stderr, stderr_tail))
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                if event := _event(raw):
                    await on_event(event)
            code = await process.wait()
            await drain
        except asyncio.CancelledError:  # the service is stopping
            self.kill()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await process.wait()
            drain.cancel()
            raise
        if self.killed:
            raise ChildFailed("cancelled")
        if code != 0:
            raise ChildFailed(f"The {self.module} process {_describe_exit(code)}: {' | '.join(stderr_tail)[-2000:]}")

    def kill(self) -> None:
        self.killed = True
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def emit(event: str, **fields: Any) -> None:
    """In the child: report one event to the parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _event(raw: bytes) -> Event:
    try:
        event = json.loads(raw)
    except ValueError:
        return {}
    return event if isinstance(event, dict) and "event" in event else {}


async def _collect_lines(stream: asyncio.StreamReader | None, tail: collections.deque[str]) -> None:
    assert stream is not None
    async for raw in stream:
        if line := raw.decode("utf-8", "replace").strip():
            tail.append(line)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"
