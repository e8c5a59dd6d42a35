"""Where a remote LLM API is and how to talk to it: the endpoint, its dialect and its credentials."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, SecretStr


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
