"""Typed settings, parsed once from the environment.

Every service has one settings class deriving from `ServiceSettings`, with its
own env prefix (`LLMMESH_<SERVICE>_`). Modules receive settings objects; they
never read `os.environ` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Fields every service process has."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_", extra="ignore", frozen=True, populate_by_name=True)

    host: str = Field("127.0.0.1", description="Interface to bind. Use 0.0.0.0 in containers.")
    port: int = Field(0, ge=0, le=65535, description="Port to bind; 0 picks a free one.")
    log_level: str = Field("info", description="Python logging level.")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight requests may run before they are cut."
    )
    data_dir: Path = Field(Path(".data"), description="Where services keep caches and state.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics port (/metrics); 0 picks a free one; unset: off."
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC message received or sent; larger ones are refused."
    )
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="Export traces over OTLP/gRPC to this endpoint. Unset: tracing is off.",
    )
    internal_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LLMMESH_INTERNAL_TOKEN"),
        description="Shared secret every RPC between services carries; `make run` generates one.",
    )

    def required_internal_token(self) -> str:
        """The internal token; services refuse to start without a strong one (it is always on)."""
        if self.internal_token is None or not self.internal_token.get_secret_value():
            raise SystemExit(
                "LLMMESH_INTERNAL_TOKEN is not set: every RPC between services must carry it. "
                "`make run` generates one; elsewhere set the same random value on every service."
            )
        return strong_secret("LLMMESH_INTERNAL_TOKEN", self.internal_token)


MIN_SECRET_BYTES = 32
# Values that stand in for a secret in examples and manifests (deploy/k8s/base/secrets.yaml).
_PLACEHOLDERS = frozenset({"changeme", "change-me", "change_me", "secret", "password", "llmmesh-dev-callback-secret"})


def strong_secret(variable: str, secret: SecretStr | None) -> str:
    """The secret's value; or, when it is unset, a known placeholder or shorter than 32 bytes,
    SystemExit naming the variable (a service must not start on a guessable secret)."""
    value = secret.get_secret_value() if secret is not None else ""
    if not value:
        raise SystemExit(f"Refusing to start: {variable} is not set.")
    if value.strip().lower() in _PLACEHOLDERS or "change-me" in value.lower():
        raise SystemExit(f"Refusing to start: {variable} is a placeholder ({value!r}); {_HOW_TO_MAKE_ONE}")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise SystemExit(f"Refusing to start: {variable} is shorter than {MIN_SECRET_BYTES} bytes; {_HOW_TO_MAKE_ONE}")
    return value


_HOW_TO_MAKE_ONE = "set a random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'."


def secret_from_environment(name: str) -> SecretStr | None:
    """A secret from the environment variable a config file names (e.g. a registry entry's
    `auth_token_env`), so that config files never hold secrets themselves."""
    value = os.environ.get(name)
    return SecretStr(value) if value else None
