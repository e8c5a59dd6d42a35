"""Clients of the session's gateway: the official openai SDK and raw HTTP."""

import httpx
import openai
import pytest


@pytest.fixture
def client(gateway_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def http(gateway_url: str):
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        yield http
