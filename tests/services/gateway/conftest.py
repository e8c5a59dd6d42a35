"""Clients of the session's gateway: the official openai SDK and raw HTTP."""

import httpx
import openai
import pytest

from tests.conftest import admin_jwt


@pytest.fixture
def client(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def admin(gateway_url: str):
    """Raw HTTP with a superuser JWT, as admin endpoints require."""
    headers = {"Authorization": f"Bearer {admin_jwt()}"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60, headers=headers) as admin:
        yield admin


@pytest.fixture
async def http(gateway_url: str):
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        yield http


@pytest.fixture
def make_key(admin: httpx.AsyncClient):
    """Create an app API key through the admin endpoint; returns the key."""

    async def make(scopes: list[str], **fields: object) -> str:
        response = await admin.post("/admin/keys", json={"name": "test", "scopes": scopes, **fields})
        assert response.status_code == 201, response.text
        return response.json()["key"]

    return make
