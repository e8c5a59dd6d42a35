"""Where a managed server runs: a child process, or an existing container.

Both share the rest of the lifecycle (backend.py): a free port, readiness on a health URL,
restarts with backoff, and stop on unload or swap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from services.common.errors import Unavailable
from services.inference.backends.managed.engine_log import EngineLog

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Runtime(ABC):
    """One engine's process or container: start, liveness, stop. Its output goes to `log`."""

    def __init__(self, log: EngineLog) -> None:
        self.log = log

    @abstractmethod
    async def start(self) -> None:
        """Start it; returns once started (not yet ready: see wait_ready)."""

    @abstractmethod
    async def alive(self) -> bool:
        """Whether it still runs."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop it and wait until it has stopped (a swap must not overlap two engines)."""

    async def ended(self, within: float) -> bool:
        """Whether it stops running within `within` seconds (a refused connection: did it die?)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self.alive():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    @abstractmethod
    def describe(self) -> str:
        """For log lines: what runs (pid or container)."""


class ProcessRuntime(Runtime):
    """A child process in its own session, stopped with `stop_signal`, killed after `stop_timeout`."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: EngineLog,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(log)
        self.argv = tuple(argv)
        self.env = {**os.environ, **env}
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        self.log.append(f"[mesh] starting: {' '.join(self.argv)}")
        try:
            # Through `services.supervised`, which ties the engine's life to this process (the kernel
            # signals it when this process dies, even by SIGKILL) and then becomes it (exec keeps the
            # pid). Not a preexec_fn: code run between fork and exec here, where gRPC's threads hold
            # locks, crashed the child now and then (SIGSEGV before exec).
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.supervised",
                str(os.getpid()),
                "--exec",
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the mesh, which stops it in order
            )
        except OSError as error:
            self.log.append(f"[mesh] could not start: {error}")
            raise Unavailable(f"The engine could not start: {error}", reason="ENGINE_START_FAILED") from error
        self._pump = asyncio.create_task(self._read_output(self._process))

    async def _read_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line past the stream's limit: read on from the next one
                continue
            if not line:
                break
            self.log.append(line.decode("utf-8", errors="replace").rstrip())
        code = await process.wait()
        self.log.append(f"[mesh] exited with {describe_exit(code)}")

    async def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        process, pump = self._process, self._pump
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(self.stop_signal)
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout)
            except TimeoutError:
                log.warning(
                    "%s ignored %s for %.0f s: killing it", self.describe(), self.stop_signal.name, self.stop_timeout
                )
                process.kill()
                await process.wait()
        if pump is not None:
            await pump

    def describe(self) -> str:
        return f"engine process {self.pid}" if self._process is not None else "engine process (not started)"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class ContainerRuntime(Runtime):
    """An existing container, started and stopped over the Docker Engine API (the docker SDK);
    the SDK blocks, so every call runs in a thread."""

    def __init__(self, container: str, docker_host: str | None, log: EngineLog, stop_timeout: float = 10.0) -> None:
        super().__init__(log)
        self.container_name = container
        self.docker_host = docker_host
        self.stop_timeout = stop_timeout
        self._container: Any = None
        self._follower: asyncio.Task[None] | None = None

    def _client(self) -> Any:
        try:
            import docker  # the containers extra
        except ImportError as error:
            raise Unavailable(
                "The container backend needs the docker SDK: install llmmesh[containers].", reason="ENGINE_START_FAILED"
            ) from error
        try:
            if self.docker_host:
                return docker.DockerClient(base_url=self.docker_host)
            return docker.from_env()
        except docker.errors.DockerException as error:
            raise Unavailable(f"No container engine reachable: {error}", reason="ENGINE_START_FAILED") from error

    async def start(self) -> None:
        def start() -> Any:
            import docker

            client = self._client()
            try:
                container = client.containers.get(self.container_name)
                container.start()
            except docker.errors.DockerException as error:
                raise Unavailable(
                    f"Container '{self.container_name}' could not start: {error}", reason="ENGINE_START_FAILED"
                ) from error
            return container

        self.log.append(f"[mesh] starting container {self.container_name}")
        self._container = await asyncio.to_thread(start)
        self._follower = asyncio.create_task(self._follow_logs())

    async def _follow_logs(self) -> None:
        loop = asyncio.get_running_loop()

        def pump() -> None:
            for line in self._container.logs(stream=True, follow=True, tail=0):
                loop.call_soon_threadsafe(self.log.append, line.decode("utf-8", errors="replace").rstrip())

        try:
            await asyncio.to_thread(pump)
        except Exception as error:  # the container went away: its log ends here
            self.log.append(f"[mesh] log stream ended: {error}")

    async def alive(self) -> bool:
        if self._container is None:
            return False

        def running() -> bool:
            try:
                self._container.reload()
            except Exception:
                return False
            return bool(self._container.status == "running")

        return await asyncio.to_thread(running)

    async def stop(self) -> None:
        if self._container is None:
            return
        await asyncio.to_thread(self._container.stop, timeout=int(self.stop_timeout))
        if self._follower is not None:
            self._follower.cancel()
        self.log.append(f"[mesh] stopped container {self.container_name}")

    def describe(self) -> str:
        return f"container {self.container_name}"


async def wait_ready(runtime: Runtime, health_url: str, timeout: float) -> None:
    """Poll `health_url` until it answers 200: llama-server answers 503 while its model loads.
    An engine that exits, or is not ready within `timeout`, is a start that failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if not await runtime.alive():
                await runtime.stop()  # all its output read, for the error
                raise _start_failed(runtime, "it exited before it was ready")
            try:
                if (await client.get(health_url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if loop.time() >= deadline:
                await runtime.stop()
                raise _start_failed(runtime, f"it was not ready within {timeout:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)


def _start_failed(runtime: Runtime, why: str) -> Unavailable:
    tail = runtime.log.tail(20)
    log.error("%s failed to start: %s. Its last output:\n%s", runtime.describe(), why, "\n".join(tail))
    last = next((line for line in reversed(tail) if line and not line.startswith("[mesh]")), "")
    detail = f" Last output: {last[:300]}" if last else ""
    return Unavailable(f"The engine failed to start: {why}.{detail}", reason="ENGINE_START_FAILED")
