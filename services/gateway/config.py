"""Gateway settings (env prefix LLMMESH_GATEWAY_)."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.config import ServiceSettings, strong_secret
from services.common.files import FileSettings
from services.common.fleet import FleetSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_GATEWAY_")

    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one.")
    inference_target: str = Field("127.0.0.1:50051", description="host:port of the inference gRPC service.")
    embeddings_target: str = Field("127.0.0.1:50052", description="host:port of the embeddings gRPC service.")
    scheduler_target: str = Field("127.0.0.1:50053", description="host:port of the scheduler gRPC service.")
    trainer_target: str = Field("127.0.0.1:50054", description="host:port of the trainer gRPC service.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    request_timeout_seconds: float = Field(600.0, gt=0, description="Deadline for each gRPC call.")
    health_timeout_seconds: float = Field(2.0, gt=0, description="Deadline for upstream health checks.")
    max_choices: int = Field(8, ge=1, description="Largest accepted `n` (choices per request).")
    response_retention_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="How long a stored /v1/responses conversation can be continued."
    )
    max_job_priority: int = Field(10, ge=0, description="Highest job priority an API key may ask for (not admins).")
    fleet: FleetSettings = Field(
        default_factory=FleetSettings, description="Other nodes to route to (LLMMESH_NODES, LLMMESH_FLEET_*)."
    )
    files: FileSettings = Field(
        default_factory=FileSettings, description="Where /v1/files keeps uploads and batch output (LLMMESH_FILES_*)."
    )
    supervisor_status_file: Path | None = Field(
        None, description="Set by `make run`: its supervisor's view of each service, shown by /health."
    )

    # ---- auth (see services/gateway/auth.py) ----
    allow_anonymous: bool = Field(
        False, description="Local development: requests without an API key may use the app endpoints (loopback only)."
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_GATEWAY_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL holding the API keys.",
    )
    api_key_secret: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_API_KEY_SECRET"),
        description="Server secret of the keys' HMAC-SHA256 digests.",
    )
    jwt_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices("LLMMESH_JWT_SECRET"), description="HS256 key of superuser JWTs."
    )
    jwt_public_key: str | None = Field(
        None, validation_alias=AliasChoices("LLMMESH_JWT_PUBLIC_KEY"), description="PEM public key, for RS256."
    )
    jwt_algorithm: Literal["HS256", "RS256"] = Field(
        "HS256",
        validation_alias=AliasChoices("LLMMESH_JWT_ALGORITHM"),
        description="HS256 (a shared secret) or RS256 (a public key).",
    )
    jwt_issuer: str = Field(
        "llmmesh", validation_alias=AliasChoices("LLMMESH_JWT_ISSUER"), description="The iss a JWT must carry."
    )
    jwt_audience: str = Field(
        "llmmesh", validation_alias=AliasChoices("LLMMESH_JWT_AUDIENCE"), description="The aud a JWT must carry."
    )
    jwt_max_lifetime_seconds: int = Field(
        24 * 3600,
        ge=60,
        validation_alias=AliasChoices("LLMMESH_JWT_MAX_LIFETIME_SECONDS"),
        description="Superuser JWTs valid for longer (exp - iat) are refused.",
    )

    # ---- input limits ----
    max_messages: int = Field(512, ge=1, description="Most messages in one chat request.")
    max_tokens_cap: int = Field(32768, ge=1, description="Largest accepted max_tokens.")

    def jwt_verification_key(self) -> str | None:
        if self.jwt_algorithm == "RS256":
            return self.jwt_public_key
        return self.jwt_secret.get_secret_value() if self.jwt_secret else None

    def check_exposure(self) -> None:
        """Refuse to serve anonymous requests anywhere but on loopback, or with weak secrets."""
        for name, variable in (("jwt_secret", "LLMMESH_JWT_SECRET"), ("api_key_secret", "LLMMESH_API_KEY_SECRET")):
            if getattr(self, name) is not None:
                strong_secret(variable, getattr(self, name))
        if self.allow_anonymous and not _is_loopback(self.host):
            raise SystemExit(
                f"Refusing to start: anonymous access (LLMMESH_GATEWAY_ALLOW_ANONYMOUS) on {self.host}, which is not "
                "loopback. Configure API keys (DATABASE_URL, LLMMESH_API_KEY_SECRET) instead."
            )
        if not self.allow_anonymous and not (self.database_url and self.api_key_secret):
            raise SystemExit(
                "Refusing to start without auth: set DATABASE_URL and LLMMESH_API_KEY_SECRET for API keys, or "
                "LLMMESH_GATEWAY_ALLOW_ANONYMOUS=true for local development on loopback."
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_secret(data_dir: Path, name: str) -> str:
    """A random secret kept under the data directory (created once, readable by the owner only),
    so that `make run` and the CLI agree on it without configuration."""
    path = data_dir / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def local_settings(settings: GatewaySettings) -> GatewaySettings:
    """`settings` completed with what `make run` keeps in the data directory (its generated
    secrets and the embedded database's URL), for the CLI on the same machine."""
    updates: dict[str, object] = {}
    for field, name in (("jwt_secret", "jwt-secret"), ("api_key_secret", "api-key-secret")):
        path = settings.data_dir / name
        if getattr(settings, field) is None and path.exists():
            updates[field] = SecretStr(path.read_text().strip())
    path = settings.data_dir / "database-url"
    if settings.database_url is None and path.exists():
        updates["database_url"] = path.read_text().strip()
    return settings.model_copy(update=updates)
