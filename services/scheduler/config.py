"""Scheduler settings (env prefix LLMMESH_SCHEDULER_). NATS_URL and DATABASE_URL are accepted as given."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings, strong_secret
from services.common.files import FileSettings
from services.common.fleet import FleetSettings
from services.scheduler.domain import JobType
from services.scheduler.queue import QueueConfig

# nats.yaml hands NATS_PASSWORD to nats-server as `$NATS_PASSWORD`, and its config parser reads
# the value as it would a literal in the file: "-abc" or "9-abc" is a broken number or date,
# "true" a boolean, and nats-server exits. A letter, then letters, digits, "-" and "_", is a string.
_NATS_CONFIG_STRING = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_SCHEDULER_")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    nats_url: str = Field(
        "",
        validation_alias=AliasChoices("LLMMESH_SCHEDULER_NATS_URL", "NATS_URL"),
        description="NATS server with JetStream enabled (required; `make run` starts one unless set).",
    )
    nats_user: str = Field(
        "", validation_alias=AliasChoices("LLMMESH_SCHEDULER_NATS_USER", "NATS_USER"), description="NATS user."
    )
    nats_password: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_SCHEDULER_NATS_PASSWORD", "NATS_PASSWORD"),
        description="NATS password: 32+ bytes, a letter, then letters, digits, - or _; or put it in the URL.",
    )
    database_url: str = Field(
        "",
        validation_alias=AliasChoices("LLMMESH_SCHEDULER_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL holding the job records (required; `make run` starts one unless set).",
    )
    inference_target: str = Field("127.0.0.1:50051", description="host:port of the inference gRPC service.")
    embeddings_target: str = Field("127.0.0.1:50052", description="host:port of the embeddings gRPC service.")
    fleet: FleetSettings = Field(
        default_factory=FleetSettings, description="Other nodes jobs may run on (LLMMESH_NODES, LLMMESH_FLEET_*)."
    )
    trainer_target: str = Field(
        "127.0.0.1:50054", description="host:port of the trainer gRPC service (adapter_train jobs). Empty: none."
    )

    # queue
    stream_name: str = Field("LLMMESH_JOBS", description="The JetStream work-queue stream.")
    stream_replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the stream (3 in a cluster).")
    duplicate_window_seconds: float = Field(120.0, gt=0, description="JetStream's Nats-Msg-Id dedup window.")
    publish_timeout_seconds: float = Field(5.0, gt=0, description="Wait for JetStream's ack; then 503.")
    ack_wait_seconds: float = Field(30.0, gt=0, description="A job silent this long is redelivered.")
    max_deliver: int = Field(5, ge=1, description="Attempts before a job fails for good (MaxDeliver).")
    retry_backoff_seconds: float = Field(1.0, gt=0, description="First retry delay; doubles each attempt.")
    retry_backoff_max_seconds: float = Field(60.0, gt=0, description="Longest retry delay.")
    default_ttl_seconds: int = Field(3600, ge=1, description="Queue TTL of jobs that set none.")
    max_ttl_seconds: int = Field(7 * 24 * 3600, ge=1, description="Longest accepted ttl_seconds.")
    retention_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="How long an ended job (request, result, dead letter) is kept."
    )

    # workers
    run_workers: bool = Field(True, description="Run workers in the scheduler process (else: separate processes).")
    worker_job_types: list[JobType] = Field(
        default_factory=lambda: [JobType.CHAT, JobType.VISION, JobType.EMBED, JobType.ADAPTER_TRAIN, JobType.BATCH],
        description="Job types this process's workers consume (JSON list).",
    )
    worker_concurrency: int = Field(2, ge=1, description="Jobs of one type a worker process runs at once.")
    batch_concurrency: int = Field(
        2, ge=1, le=64, description="Requests of one batch job in flight at once (low priority: they yield)."
    )
    files: FileSettings = Field(
        default_factory=FileSettings, description="The file store batches read and write (LLMMESH_FILES_*)."
    )
    poll_seconds: float = Field(1.0, gt=0, description="Fallback poll interval of watchers and sweepers.")

    # callbacks
    callback_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key of the X-LLMMesh-Signature header (32+ bytes); `make run` generates one.",
    )
    callback_allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description='Private networks callbacks may reach anyway, e.g. ["10.0.0.0/8"] (JSON list).',
    )
    callback_timeout_seconds: float = Field(10.0, gt=0, description="Per-attempt timeout of a callback POST.")
    callback_max_attempts: int = Field(8, ge=1, description="Callback POSTs before giving up.")
    callback_backoff_seconds: float = Field(1.0, gt=0, description="First callback retry delay; doubles each time.")

    @property
    def queue_config(self) -> QueueConfig:
        return QueueConfig(
            stream=self.stream_name,
            replicas=self.stream_replicas,
            duplicate_window_seconds=self.duplicate_window_seconds,
            ack_wait_seconds=self.ack_wait_seconds,
            max_deliver=self.max_deliver,
            publish_timeout_seconds=self.publish_timeout_seconds,
        )

    def retry_delay(self, attempt: int, base: float | None = None) -> float:
        """Exponential backoff after `attempt` failures (1-based), capped."""
        first = self.retry_backoff_seconds if base is None else base
        return float(min(first * 2 ** max(attempt - 1, 0), self.retry_backoff_max_seconds))

    def nats_credentials(self) -> dict[str, str]:
        """nats.connect's user and password. A weak password, here or in the URL, refuses to
        start: whoever holds it can forge jobs, cancels and advisories."""
        if password := urlsplit(self.nats_url).password:
            strong_secret("NATS_URL's password", SecretStr(unquote(password)))
        if self.nats_password is None:
            return {}
        password = strong_secret("NATS_PASSWORD", self.nats_password)
        if not _NATS_CONFIG_STRING.fullmatch(password):
            raise SystemExit(
                "Refusing to start: NATS_PASSWORD must start with a letter and hold only letters, digits, "
                "'-' and '_' (nats-server's config parser reads others as numbers, dates or booleans); "
                """e.g. python -c 'import secrets; print("n" + secrets.token_urlsafe(32))'."""
            )
        return {"user": self.nats_user, "password": password}
