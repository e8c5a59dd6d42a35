"""REST backend configuration.

Environment (jarvis-llm-proxy names accepted as aliases), overridden per model by
the registry entry's `options` (url, provider, request_format, auth_type,
auth_header, auth_token_env, timeout, model). The background slot's URL and
model name fall back to the live slot's.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.config import secret_from_environment


class Provider(StrEnum):
    """How responses are parsed (and which endpoint is called)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"
    LMSTUDIO = "lmstudio"
    GENERIC = "generic"


class RequestFormat(StrEnum):
    """How messages are serialized."""

    OPENAI = "openai"
    OLLAMA = "ollama"
    CHATML = "chatml"
    GENERIC = "generic"


class AuthType(StrEnum):
    NONE = "none"
    BEARER = "bearer"
    API_KEY = "api_key"
    CUSTOM = "custom"


def _env(*names: str, default: Any = None) -> Any:
    return Field(default, validation_alias=AliasChoices(*names))


class RestEnvironment(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    live_url: str | None = _env("LLMMESH_REST_LIVE_URL", "JARVIS_LIVE_REST_MODEL_URL")
    background_url: str | None = _env("LLMMESH_REST_BACKGROUND_URL", "JARVIS_BACKGROUND_REST_MODEL_URL")
    live_model: str | None = _env("LLMMESH_REST_MODEL_NAME", "JARVIS_REST_MODEL_NAME")
    background_model: str | None = _env("LLMMESH_REST_BACKGROUND_MODEL_NAME", "JARVIS_REST_BACKGROUND_MODEL_NAME")
    provider: Provider = _env("LLMMESH_REST_PROVIDER", "JARVIS_REST_PROVIDER", default=Provider.GENERIC)
    request_format: RequestFormat = _env(
        "LLMMESH_REST_REQUEST_FORMAT", "JARVIS_REST_REQUEST_FORMAT", default=RequestFormat.OPENAI
    )
    auth_type: AuthType = _env("LLMMESH_REST_AUTH_TYPE", "JARVIS_REST_AUTH_TYPE", default=AuthType.NONE)
    auth_token: SecretStr | None = _env("LLMMESH_REST_AUTH_TOKEN", "JARVIS_REST_AUTH_TOKEN")
    auth_header: str = _env("LLMMESH_REST_AUTH_HEADER", "JARVIS_REST_AUTH_HEADER", default="Authorization")
    timeout: float = _env("LLMMESH_REST_TIMEOUT", "JARVIS_REST_TIMEOUT", default=60.0)


class RestConfig(BaseModel):
    """The resolved configuration of one REST model."""

    model_config = ConfigDict(frozen=True)

    url: str
    remote_model: str
    provider: Provider
    request_format: RequestFormat
    auth_type: AuthType
    auth_token: SecretStr | None
    auth_header: str
    timeout: float
    retries: int = 2

    def headers(self) -> dict[str, str]:
        token = self.auth_token.get_secret_value() if self.auth_token else ""
        if self.provider is Provider.ANTHROPIC:
            return (
                {"x-api-key": token, "anthropic-version": "2023-06-01"}
                if token
                else {"anthropic-version": "2023-06-01"}
            )
        if self.auth_type is AuthType.BEARER:
            return {"Authorization": f"Bearer {token}"}
        if self.auth_type is AuthType.API_KEY:
            return {"api-key": token, "x-api-key": token}
        if self.auth_type is AuthType.CUSTOM:
            return {self.auth_header: token}
        return {}


def resolve_config(
    name: str, path: str | None, options: dict[str, Any], env: RestEnvironment | None = None
) -> RestConfig:
    env = env or RestEnvironment()
    slot = options.get("slot")
    url = options.get("url") or (env.background_url if slot == "background" else None) or env.live_url
    if not url:
        raise ValueError(
            f"REST model '{name}' has no URL: set options.url in the registry, or LLMMESH_REST_LIVE_URL "
            "(JARVIS_LIVE_REST_MODEL_URL)"
        )
    slot_model = (env.background_model or env.live_model) if slot == "background" else env.live_model
    token = secret_from_environment(options["auth_token_env"]) if "auth_token_env" in options else env.auth_token
    file_path = path if path and not path.startswith("package:") else None
    return RestConfig(
        url=url.rstrip("/"),
        remote_model=options.get("model") or slot_model or file_path or name,
        provider=Provider(options.get("provider", env.provider)),
        request_format=RequestFormat(options.get("request_format", env.request_format)),
        auth_type=AuthType(options.get("auth_type", env.auth_type)),
        auth_token=token,
        auth_header=options.get("auth_header", env.auth_header),
        timeout=float(options.get("timeout", env.timeout)),
    )
