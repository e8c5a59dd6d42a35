"""`python -m services` (what `make run` calls): start the whole mesh on this machine.

Each service runs as its own process, as it would in a deployment, supervised: a service
that crashes is restarted with backoff (services/supervisor.py), and every service dies with
the launcher. Ctrl-C (or SIGTERM) stops them all gracefully.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.embedded_nats import EmbeddedNats
from services.embeddings.config import EmbeddingsSettings
from services.gateway.auth import mint_jwt
from services.gateway.config import GatewaySettings, local_secret, local_settings
from services.inference.config import InferenceSettings
from services.scheduler.config import SchedulerSettings
from services.supervisor import Dependency, Service, Supervisor, adopt_orphans, describe_exit
from services.trainer.config import TrainerSettings

STARTUP_TIMEOUT_SECONDS = 300


def _grpc_ready(address: str) -> Callable[[], bool]:
    return lambda: _grpc_serving(address)


def _grpc_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return response.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_until(service: Service) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not service.ready():
        if service.exited():
            raise SystemExit(f"{service.name} exited during startup ({describe_exit(service.process.returncode)})")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise SystemExit(f"{service.name} was not ready after {STARTUP_TIMEOUT_SECONDS}s")
        time.sleep(0.2)  # polling a local port during startup
    service.state = "running"


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600)
    path.write_text(text)


def _embedded_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start PostgreSQL under the data directory, so that settings survive restarts. One left
    running by an earlier run (a launcher that was killed) is reused; one whose data directory
    is gone is stopped first."""
    import pgserver  # only needed when no DATABASE_URL is given
    import psutil

    pgdata = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in (process.info["cmdline"] or []):
            if (pgdata / "PG_VERSION").exists():
                print(f"Reusing the embedded PostgreSQL an earlier run left running (pid {process.pid}).", flush=True)
            else:
                print(f"Stopping a stale PostgreSQL (pid {process.pid}) whose data directory is gone.", flush=True)
                process.terminate()
                psutil.wait_procs([process], timeout=30)
            break
    _forget_dead_handles(pgdata / ".handle_pids.json")
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri(), server


def _postgres_dependency(server: Any, database_url: str) -> Dependency:
    """The embedded PostgreSQL, supervised: its postmaster watched through postmaster.pid, and
    started again (pg_ctl, on the same data directory and socket) when it dies."""
    from pgserver.utils import PostmasterInfo

    def alive() -> bool:
        # Not pgserver's is_running: psutil counts a zombie as running. The launcher adopts the
        # postmaster and reaps it each round (adopt_orphans), but a kill between two rounds
        # leaves a zombie for up to half a second.
        import psutil

        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        try:
            return info is not None and psutil.Process(info.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def pid() -> int | None:
        info = PostmasterInfo.read_from_pgdata(server.pgdata)
        return info.pid if info is not None else None

    def launch() -> None:
        server.ensure_postgres_running()
        if server.get_uri() != database_url:  # the services were told the first address
            raise RuntimeError(f"PostgreSQL came back at {server.get_uri()}, not {database_url}")

    def cause() -> str:
        return f"postmaster (pid {pid()}) is gone"

    return Dependency(
        "postgres", "", database_url, launch=launch, alive=alive, halt=server.cleanup, describe=cause, server_pid=pid
    )


def _nats_dependency(nats: EmbeddedNats) -> Dependency:
    """The embedded nats-server, supervised: a child of the launcher, reaped when it dies and
    started again on the same port and JetStream store."""

    def alive() -> bool:
        return nats.process is not None and nats.process.poll() is None

    def cause() -> str:
        code = nats.process.returncode if nats.process is not None else None
        return describe_exit(code) if code is not None else "died"

    def pid() -> int | None:
        return nats.process.pid if nats.process is not None else None

    def launch() -> None:
        nats.start()
        dependency.process = nats.process  # a Popen of ours: its poll() reaps it, not the orphan reaper

    dependency = Dependency(
        "nats", "", nats.url, launch=launch, alive=alive, halt=nats.stop, describe=cause, server_pid=pid
    )
    dependency.process = nats.process
    return dependency


def _forget_dead_handles(handles: Path) -> None:
    """pgserver stops its server when the last process holding it exits, by a list of pids it
    keeps in the data directory. A launcher that was killed stays on that list, and the server
    would then outlive every later run: only live processes are kept."""
    import psutil

    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    if isinstance(pids, list):
        handles.write_text(json.dumps([pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]))


def main() -> None:
    adopt_orphans()  # before PostgreSQL starts: its postmaster becomes ours to reap
    inference_settings, scheduler_settings = InferenceSettings(), SchedulerSettings()
    data_dir = inference_settings.data_dir.resolve()
    database_url, postgres = inference_settings.database_url or scheduler_settings.database_url, None
    if not database_url:
        database_url, postgres = _embedded_postgres(data_dir)
        print(f"Embedded PostgreSQL: {database_url}", flush=True)
    nats_url, nats = scheduler_settings.nats_url, None
    if not nats_url:
        # Only the scheduler talks to NATS: with a password of its own, nobody else can forge jobs.
        nats = EmbeddedNats(data_dir / "nats", user="llmmesh", password=local_secret(data_dir, "nats-password"))
        nats_url = nats.start()
        print(f"Embedded NATS JetStream: nats://127.0.0.1:{nats.port} (user llmmesh, password in .data)", flush=True)
    grpc_services = [
        Service(name, f"services.{name}", address := f"{settings.host}:{settings.port}", _grpc_ready(address))
        for name, settings in (
            ("inference", inference_settings),
            ("embeddings", EmbeddingsSettings()),
            ("scheduler", scheduler_settings),
            ("trainer", TrainerSettings()),
        )
    ]
    addresses = {service.name: service.address for service in grpc_services}
    # Prometheus metrics of each gRPC service, unless configured otherwise.
    for index, name in enumerate(("INFERENCE", "EMBEDDINGS", "SCHEDULER", "TRAINER"), start=1):
        os.environ.setdefault(f"LLMMESH_{name}_METRICS_PORT", str(9100 + index))
    # Inference and the trainer share one adapter store: what is trained is served at once.
    os.environ.setdefault("LLMMESH_ARTIFACTS_DIR", str(data_dir / "adapters"))
    # The gateway and the scheduler route over the `nodes:` of the registry inference serves.
    os.environ.setdefault("LLMMESH_FLEET_FILE", str(inference_settings.models_file))
    # The internal token is always on: without one configured, a fresh one for this run.
    internal_token = os.environ.get("LLMMESH_INTERNAL_TOKEN") or secrets.token_urlsafe(32)
    os.environ["LLMMESH_INTERNAL_TOKEN"] = internal_token  # inherited by every service started below
    # Secrets of API keys and superuser JWTs persist in the data directory, where the CLI finds them.
    for variable, name in (
        ("LLMMESH_JWT_SECRET", "jwt-secret"),
        ("LLMMESH_API_KEY_SECRET", "api-key-secret"),
        ("LLMMESH_SCHEDULER_CALLBACK_SECRET", "callback-secret"),
    ):
        os.environ.setdefault(variable, local_secret(data_dir, name))
    if postgres is not None:
        _write_private(data_dir / "database-url", database_url)
    service_env = {
        "inference": {"LLMMESH_INFERENCE_DATABASE_URL": database_url},
        "scheduler": {
            "LLMMESH_SCHEDULER_DATABASE_URL": database_url,
            "LLMMESH_SCHEDULER_NATS_URL": nats_url,
            "LLMMESH_SCHEDULER_INFERENCE_TARGET": addresses["inference"],
            "LLMMESH_SCHEDULER_EMBEDDINGS_TARGET": addresses["embeddings"],
            "LLMMESH_SCHEDULER_TRAINER_TARGET": addresses["trainer"],
        },
        "trainer": {"LLMMESH_TRAINER_INFERENCE_TARGET": addresses["inference"]},
    }
    gateway_settings = GatewaySettings()
    gateway_url = f"http://{gateway_settings.host}:{gateway_settings.port}"
    gateway = Service("gateway", "services.gateway", gateway_url, lambda: _http_ok(f"{gateway_url}/health/ready"))
    dependencies = [_postgres_dependency(postgres, database_url)] if postgres is not None else []
    dependencies += [_nats_dependency(nats)] if nats is not None else []
    for dependency in dependencies:
        dependency.state, dependency.started_at = "running", time.monotonic()
    services = [*dependencies, *grpc_services, gateway]
    supervisor = Supervisor(services, status_file=data_dir / "supervisor.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C stops the mesh even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for service in grpc_services:  # started together, so that they load their models in parallel
            # What the operator set wins over what the launcher wires up.
            wiring = service_env.get(service.name, {})
            service.env = {**wiring, **{k: v for k, v in os.environ.items() if k in wiring}}
            service.start()
        for service in grpc_services:
            _wait_until(service)
        # The gateway follows the services' addresses unless told otherwise.
        targets = {f"LLMMESH_GATEWAY_{s.name.upper()}_TARGET": s.address for s in grpc_services}
        wiring = {
            **targets,
            "LLMMESH_GATEWAY_DATABASE_URL": database_url,
            "LLMMESH_GATEWAY_SUPERVISOR_STATUS_FILE": str(supervisor.status_file),
        }
        # Local development on loopback works without API keys, explicitly (the gateway logs it).
        if _loopback(gateway_settings.host):
            wiring["LLMMESH_GATEWAY_ALLOW_ANONYMOUS"] = "true"
        gateway.env = {**wiring, **{k: v for k, v in os.environ.items() if k in wiring}}
        gateway.start()
        _wait_until(gateway)
        supervisor.write_status()
        admin_jwt = mint_jwt(local_settings(GatewaySettings()), "make-run", ttl_seconds=24 * 3600)
        lines = [f"  OpenAI-compatible HTTP: {gateway.address}/v1   (health: {gateway.address}/health)"]
        lines += [
            "  API keys: off on loopback (local development); admin endpoints need this JWT (24 h):",
            f"    Authorization: Bearer {admin_jwt}",
            "    more: .venv/bin/python -m services.gateway.cli token (keys: ... keys --help)",
        ]
        lines += [f"  {s.name + ' gRPC:':23s} {s.address}" for s in grpc_services]
        lines += [
            f"  try: grpcurl -plaintext {grpc_services[0].address} list",
            f"       grpcurl -plaintext -H x-internal-token:{internal_token} -d '{{}}' \\",
            f"         {grpc_services[0].address} llmmesh.inference.v1.InferenceService/ListModels",
        ]
        print("\nLLM Mesh is up.\n" + "\n".join(lines) + "\nPress Ctrl-C to stop.\n", flush=True)
        while True:  # a crashed service is restarted with backoff; the rest keep serving
            supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        supervisor.stop()  # the services, then NATS and PostgreSQL


if __name__ == "__main__":
    main()
