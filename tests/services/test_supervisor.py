"""The `make run` supervisor's rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.supervisor import Service, Supervisor


def test_a_service_that_stops_on_its_own_stops_the_mesh() -> None:
    """`make run`: a clean exit nobody asked for is an idle shutdown; a crash is restarted."""
    crashed = Service("crashed", "unused", "")
    crashed.process, crashed.state = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]), "running"
    crashed.process.wait()
    idle = Service("idle", "unused", "")
    supervisor = Supervisor([crashed, idle])
    supervisor.check()
    assert crashed.state == "restarting"
    idle.process, idle.state = subprocess.Popen([sys.executable, "-c", "pass"]), "running"
    idle.process.wait()
    with pytest.raises(SystemExit) as stopped:
        supervisor.check()
    assert stopped.value.code == 0
