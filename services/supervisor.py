"""The `make run` supervisor: each service is a child process that dies with the launcher and
is restarted with backoff when it crashes, as a Kubernetes restart policy would do.

A crash is logged with its cause (exit code or signal) and counted. The supervisor writes each
service's state to a small JSON file, which the gateway's /health reads, so a service being
restarted shows as RESTARTING instead of taking the mesh down.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.exit_codes import IDLE_SHUTDOWN_EXIT_CODE

log = logging.getLogger("llmmesh.supervisor")

FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 60.0  # up this long after a restart: the next crash starts the backoff over
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux): PostgreSQL's postmaster,
    which pg_ctl leaves behind, is then this process's child, and when it is killed it is reaped
    here (Supervisor.reap_orphans) instead of lingering as a zombie that looks alive and keeps
    PostgreSQL from starting again."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when `parent` dies, even by SIGKILL, so that
    no service is left holding its port after the launcher is gone."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above took effect
        raise SystemExit(f"the launcher (pid {parent}) is gone")


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class Service:
    name: str
    module: str
    address: str
    ready: Callable[[], bool] = lambda: True
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"  # starting, running, restarting, stopped
    restarts: int = 0
    last_exit: str = ""
    backoff: float = FIRST_BACKOFF_SECONDS
    next_start: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        # Through `services.supervised`, which ties the child's life to this process first.
        command = [sys.executable, "-m", "services.supervised", str(os.getpid()), self.module]
        self.process = subprocess.Popen(command, env={**os.environ, **self.env})
        self.state, self.started_at = "starting", time.monotonic()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def exit_cause(self) -> str:
        assert self.process is not None and self.process.returncode is not None
        return describe_exit(self.process.returncode)

    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def idle_shutdown(self) -> bool:
        """Whether it ended itself for being idle: the documented way for the mesh to stop."""
        return self.process is not None and self.process.returncode == IDLE_SHUTDOWN_EXIT_CODE

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.process:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class Dependency(Service):
    """A server the services need (the embedded NATS, PostgreSQL): watched, and restarted with
    backoff on the same data directory when it dies, like a service. `launch` starts it (blocking
    until it serves) and raises when it cannot; `alive` tells whether it still runs; `halt` stops it."""

    launch: Callable[[], object] = lambda: None
    alive: Callable[[], bool] = lambda: True
    halt: Callable[[], None] = lambda: None
    describe: Callable[[], str] = lambda: "died"  # how it ended, once not alive
    server_pid: Callable[[], int | None] = lambda: None
    cause: str = ""

    def start(self) -> None:
        self.state, self.started_at = "starting", time.monotonic()
        try:
            self.launch()
            self.cause = ""
        except Exception as error:  # noqa: BLE001 - a failed start is retried with backoff, like a crash
            self.cause = f"failed to start: {error}"
            log.error("%s %s", self.name, self.cause)

    def exited(self) -> bool:
        return bool(self.cause) or not self.alive()

    def exit_cause(self) -> str:
        return self.cause or self.describe()

    def pid(self) -> int | None:
        return self.server_pid()

    def idle_shutdown(self) -> bool:
        return False

    def stop(self) -> None:
        self.halt()

    def wait(self) -> None:
        pass


class Supervisor:
    def __init__(self, services: list[Service], status_file: Path | None = None) -> None:
        self.services = services
        self.status_file = status_file

    def reap_orphans(self) -> None:
        """Reap exited children that no Popen owns (adopted orphans); a Popen's own child is left
        for its poll(), which needs its exit status."""
        owned = {service.process.pid for service in self.services if service.process is not None}
        while True:
            try:
                exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if exited is None or exited.si_pid in owned:
                return
            os.waitpid(exited.si_pid, 0)

    def check(self) -> None:
        """One round: notice crashes, restart what is due, mark what became ready."""
        self.reap_orphans()
        now = time.monotonic()
        changed = False
        for service in self.services:
            if service.state in ("starting", "running") and service.exited():
                if service.idle_shutdown():  # nobody used it: the documented stop
                    log.warning("%s stopped on its own (idle shutdown): stopping the mesh", service.name)
                    raise SystemExit(0)
                # Anything else, a clean exit after a stray SIGTERM included, is restarted, as a
                # Kubernetes restart policy would: only the launcher's own stop ends the mesh.
                service.last_exit = service.exit_cause()
                if service.state == "running" and now - service.started_at >= STABLE_SECONDS:
                    service.backoff = FIRST_BACKOFF_SECONDS
                service.state, service.next_start = "restarting", now + service.backoff
                log.error(
                    "%s %s; restarting in %.0f s (restart %d)",
                    service.name,
                    service.last_exit,
                    service.backoff,
                    service.restarts + 1,
                )
                service.backoff = min(service.backoff * 2, MAX_BACKOFF_SECONDS)
                changed = True
            elif service.state == "restarting" and now >= service.next_start:
                service.restarts += 1
                service.start()
                changed = True
            elif service.state == "starting" and service.ready():
                service.state = "running"
                if service.restarts:
                    log.warning("%s is back (restart %d)", service.name, service.restarts)
                changed = True
        if changed:
            self.write_status()

    def write_status(self) -> None:
        if self.status_file is None:
            return
        status = {
            service.name: {
                "state": service.state,
                "restarts": service.restarts,
                "last_exit": service.last_exit,
                "pid": service.pid(),
                "kind": "dependency" if isinstance(service, Dependency) else "service",
            }
            for service in self.services
        }
        temporary = self.status_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"services": status}))
        temporary.replace(self.status_file)  # readers never see half a file

    def stop(self) -> None:
        """SIGTERM to every service (the gateway first), wait for each to drain, then stop the
        dependencies (listed first: they stop last)."""
        services = [s for s in self.services if not isinstance(s, Dependency)]
        for service in reversed(services):
            service.state = "stopped"
            service.stop()
        for service in reversed(services):
            service.wait()
        for dependency in reversed([s for s in self.services if isinstance(s, Dependency)]):
            dependency.state = "stopped"
            dependency.stop()
        self.write_status()
