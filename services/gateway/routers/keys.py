"""App API key management (superuser JWT only): create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from services.common.errors import FailedPrecondition
from services.gateway.api_keys import ApiKeyStore, NewKey, Quotas
from services.gateway.auth import superuser
from services.gateway.protocol.common import INT32_MAX, OpenAIModel

router = APIRouter(dependencies=[Depends(superuser)])


class QuotasIn(OpenAIModel):
    max_priority: int | None = Field(None, ge=0, le=INT32_MAX)
    max_training_examples: int | None = Field(None, ge=1, le=INT32_MAX)
    max_training_epochs: int | None = Field(None, ge=1, le=INT32_MAX)
    max_training_steps: int | None = Field(None, ge=1, le=INT32_MAX)
    max_training_seconds: float | None = Field(None, gt=0, le=365 * 86400)

    def to_domain(self) -> Quotas:
        return Quotas(**self.model_dump())


class KeyIn(OpenAIModel):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[str] = Field(min_length=1)
    models: list[str] | None = None
    rpm_limit: int | None = Field(None, ge=1, le=INT32_MAX)
    tpm_limit: int | None = Field(None, ge=1, le=INT32_MAX)
    stream_limit: int | None = Field(None, ge=1, le=INT32_MAX)
    quotas: QuotasIn = Field(default_factory=QuotasIn)

    def to_domain(self) -> NewKey:
        return NewKey(
            name=self.name,
            scopes=tuple(self.scopes),
            models=tuple(self.models) if self.models is not None else None,
            rpm_limit=self.rpm_limit,
            tpm_limit=self.tpm_limit,
            stream_limit=self.stream_limit,
            quotas=self.quotas.to_domain(),
        )


def _store(request: Request) -> ApiKeyStore:
    store: ApiKeyStore | None = request.app.state.authenticator.keys
    if store is None:
        raise FailedPrecondition("API keys need DATABASE_URL and LLMMESH_API_KEY_SECRET on the gateway.")
    return store


@router.post("/admin/keys", status_code=201)
async def create_key(body: KeyIn, request: Request) -> JSONResponse:
    key, secret = await _store(request).create(body.to_domain())
    return JSONResponse({**key.body(), "key": secret}, status_code=201)  # the only time the key is shown


@router.get("/admin/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    store = _store(request)
    keys = await store.list()
    return {"object": "list", "data": [{**k.body(), "usage": await store.usage(k.key_id)} for k in keys]}


@router.delete("/admin/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> dict[str, Any]:
    return (await _store(request).revoke(key_id)).body()
