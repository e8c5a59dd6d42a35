"""REST backend configuration.

Environment (jarvis-llm-proxy names accepted as aliases), overridden per model by
the registry entry's `options` (url, provider, request_format, auth_type,
auth_header, auth_token_env, timeout, model). The background slot's URL and
model name fall back to the live slot's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import compat
from services.common.config import secret_from_environment
from services.inference.backends.base import BackendOptions
from services.upstream.config import AuthType, Provider, RequestFormat, RestConfig


class RestEnvironment(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    live_url: str | None = compat.env(
        "LLMMESH_REST_LIVE_URL", description="Base URL of the remote API the live slot's rest model calls."
    )
    background_url: str | None = compat.env(
        "LLMMESH_REST_BACKGROUND_URL", description="Base URL for the background slot. Unset: the live URL."
    )
    live_model: str | None = compat.env(
        "LLMMESH_REST_MODEL_NAME", description="The remote model name the live slot asks for."
    )
    background_model: str | None = compat.env(
        "LLMMESH_REST_BACKGROUND_MODEL_NAME", description="The remote model name for the background slot."
    )
    provider: Provider = compat.env(
        "LLMMESH_REST_PROVIDER",
        Provider.GENERIC,
        description="The remote API: openai, anthropic, ollama, lmstudio or generic.",
    )
    request_format: RequestFormat = compat.env(
        "LLMMESH_REST_REQUEST_FORMAT",
        RequestFormat.OPENAI,
        description="The request body: openai, ollama, chatml or generic.",
    )
    auth_type: AuthType = compat.env(
        "LLMMESH_REST_AUTH_TYPE",
        AuthType.NONE,
        description="How the token is sent: none, bearer, api_key or custom (auth_header).",
    )
    auth_token: SecretStr | None = compat.env("LLMMESH_REST_AUTH_TOKEN", description="The remote API's token.")
    auth_header: str = compat.env(
        "LLMMESH_REST_AUTH_HEADER", "Authorization", description="The header a token goes in."
    )
    timeout: float = compat.env("LLMMESH_REST_TIMEOUT", 60.0, description="Seconds a remote call may take.")


class RestOptions(BackendOptions):
    """A REST model's registry options; unset fields take RestEnvironment's values."""

    url: str | None = Field(None, description="The API's base URL.")
    model: str | None = Field(None, description="The remote model name. Unset: the registry's path or name.")
    provider: Provider | None = None
    request_format: RequestFormat | None = None
    auth_type: AuthType | None = None
    auth_header: str | None = None
    auth_token_env: str | None = Field(None, description="The environment variable holding the API token.")
    timeout: float | None = Field(None, gt=0)
    slot: Literal["live", "background"] | None = Field(None, description="Set by routing: the slot it serves.")


def resolve_config(name: str, path: str | None, options: RestOptions, env: RestEnvironment | None = None) -> RestConfig:
    env = env or RestEnvironment()
    slot = options.slot
    url = options.url or (env.background_url if slot == "background" else None) or env.live_url
    if not url:
        raise ValueError(
            f"REST model '{name}' has no URL: set options.url in the registry, or LLMMESH_REST_LIVE_URL "
            "(JARVIS_LIVE_REST_MODEL_URL)"
        )
    slot_model = (env.background_model or env.live_model) if slot == "background" else env.live_model
    token = secret_from_environment(options.auth_token_env) if options.auth_token_env else env.auth_token
    file_path = path if path and not path.startswith("package:") else None
    return RestConfig(
        url=url.rstrip("/"),
        remote_model=options.model or slot_model or file_path or name,
        provider=options.provider or env.provider,
        request_format=options.request_format or env.request_format,
        auth_type=options.auth_type or env.auth_type,
        auth_token=token,
        auth_header=options.auth_header or env.auth_header,
        timeout=options.timeout or env.timeout,
    )
