"""The `make run` supervisor's rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.common.exit_codes import IDLE_SHUTDOWN_EXIT_CODE
from services.supervisor import Service, Supervisor


def test_only_an_idle_shutdown_stops_the_mesh() -> None:
    """`make run`: a service that ends itself for being idle stops the mesh; a crash is restarted,
    and so is a clean exit after a stray SIGTERM (a Kubernetes pod would be restarted too)."""
    crashed = Service("crashed", "unused", "")
    crashed.process, crashed.state = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), "running"
    crashed.process.wait()
    idle = Service("idle", "unused", "")
    supervisor = Supervisor([crashed, idle])
    supervisor.check()
    assert crashed.state == "restarting"
    terminated = Service("terminated", "unused", "")
    terminated.process, terminated.state = subprocess.Popen([sys.executable, "-c", "pass"]), "running"
    terminated.process.wait()
    supervisor.services.append(terminated)
    supervisor.check()
    assert terminated.state == "restarting" and terminated.last_exit == "exited with code 0"
    code = f"raise SystemExit({IDLE_SHUTDOWN_EXIT_CODE})"
    idle.process, idle.state = subprocess.Popen([sys.executable, "-c", code]), "running"
    idle.process.wait()
    with pytest.raises(SystemExit) as stopped:
        supervisor.check()
    assert stopped.value.code == 0
